"""Kafka consumer."""
