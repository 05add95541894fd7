"""Contact rules and models; no FastAPI, Kafka or pymongo here."""
