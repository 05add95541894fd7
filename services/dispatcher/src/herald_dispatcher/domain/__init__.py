"""Policy rules and rendering; no FastAPI, Kafka or pymongo here."""
