"""Kafka consumers."""
