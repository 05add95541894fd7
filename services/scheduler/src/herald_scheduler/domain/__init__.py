"""Campaign rules; no FastAPI, Kafka or pymongo here."""
