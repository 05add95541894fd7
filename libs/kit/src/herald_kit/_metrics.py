"""Prometheus metrics shared by every service (names herald_<what>_<unit>)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONSUMED = Counter(
    "herald_consumer_messages_total",
    "Messages handled by a consumer, by outcome (ok, dlq, retried).",
    ["group", "topic", "outcome"],
)
DLQ = Counter(
    "herald_dlq_messages_total", "Messages sent to a dead-letter topic.", ["group", "reason"]
)
LAG = Gauge(
    "herald_consumer_lag_messages", "Messages behind the partition end.", ["group", "topic"]
)
HANDLE_SECONDS = Histogram(
    "herald_consumer_handle_seconds",
    "Time to handle one message, effects included.",
    ["group", "topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PRODUCED = Counter("herald_produced_messages_total", "Messages published.", ["topic"])
HTTP_REQUESTS = Counter(
    "herald_http_requests_total", "HTTP requests answered.", ["route", "method", "status"]
)
UP = Gauge("herald_service_ready", "1 when the service's dependencies are reachable.", ["service"])
