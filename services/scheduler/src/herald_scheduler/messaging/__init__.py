"""Kafka consumers and producers."""
