"""Kafka: snapshots out."""
