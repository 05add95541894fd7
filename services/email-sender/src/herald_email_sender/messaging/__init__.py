"""Consumers: outbound.email.v1 in concurrent batches."""
