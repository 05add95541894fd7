"""Case projection rules; no FastAPI, Kafka or pymongo here."""
