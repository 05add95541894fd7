"""Kafka intake."""
