"""Prometheus metrics shared by every service (names herald_<what>_<unit>)."""

from __future__ import annotations

import functools
from typing import Any

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
DB_COMMANDS = Counter(
    "herald_db_commands_total",
    "Database commands the service sent, by command, collection and outcome (ok, error).",
    ["command", "collection", "outcome"],
)
DB_COMMAND_SECONDS = Histogram(
    "herald_db_command_seconds",
    "Time the database took to answer one command, by command.",
    ["command"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
UP = Gauge("herald_service_ready", "1 when the service's dependencies are reachable.", ["service"])
BACKGROUND_RUNS = Counter(
    "herald_background_runs_total",
    "Runs of a periodic background task (the retention sweep, ingest's dedupe sweeper, the "
    "preferences republisher), by task and outcome (ok, failed).",
    ["task", "outcome"],
)
UNKNOWN_FIELDS = Counter(
    "herald_unknown_fields_ignored_total",
    "Fields unknown to this version, ignored in an event or stored row a newer version of "
    "Herald wrote (a rolling update in progress), by event type or row kind.",
    ["kind"],
)
ROWS_FORGOTTEN = Counter(
    "herald_rows_forgotten_total",
    "Rows deleted once past their retention, by collection.",
    ["collection"],
)

# Senders talking to an outside provider (Twilio, an SMTP relay). `sender` is the service name:
# never a phone number or any other identity of a customer or of ours.
PROVIDER_REQUESTS = Counter(
    "herald_provider_requests_total",
    "Requests to an outside provider, by outcome (accepted, rejected, busy, timeout) and code.",
    ["sender", "outcome", "code"],
)
PROVIDER_SECONDS = Histogram(
    "herald_provider_request_seconds",
    "Time a provider took to answer one request (or to time out), by outcome.",
    ["sender", "outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SEND_OUTCOMES = Counter(
    "herald_send_outcomes_total",
    "Delivery statuses a sender published (sent, failed, unknown, ...).",
    ["channel", "status"],
)
PACER_WAIT = Histogram(
    "herald_pacer_wait_seconds",
    "Time a send waited for its pacer slot (0 when a token was free).",
    ["sender"],
    buckets=(0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PACER_HOLDS = Counter(
    "herald_pacer_holds_total",
    "Times a provider's 429 / Retry-After held a sender's pacer.",
    ["sender"],
)
PACER_RATE = Gauge(
    "herald_pacer_rate_per_second",
    "A sender replica's pace: its share of the configured rate (sum over replicas for the "
    "whole; 0 = unpaced when configured so, or no partition owned).",
    ["sender"],
)
PACER_TOKENS = Gauge(
    "herald_pacer_tokens",
    "Sends a sender's pacer allows back to back right now (its fullest identity's bucket).",
    ["sender"],
)
BREAKER_STATE = Gauge(
    "herald_circuit_breaker_state",
    "A sender's provider circuit breaker: 0 closed, 1 half-open, 2 open.",
    ["sender"],
)
BREAKER_OPENED = Counter(
    "herald_circuit_breaker_opened_total", "Times a sender's circuit breaker opened.", ["sender"]
)


def observe_provider_request(*, sender: str, outcome: str, code: str, seconds: float) -> None:
    """Count one provider request and its latency (outcome: accepted, rejected, busy, timeout)."""
    PROVIDER_REQUESTS.labels(sender, outcome, code).inc()
    PROVIDER_SECONDS.labels(sender, outcome).observe(seconds)


def count_send_outcome(*, channel: str, status: str) -> None:
    """Count one delivery status a sender published."""
    SEND_OUTCOMES.labels(channel, status).inc()


@functools.lru_cache(maxsize=4096)
def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, remembered: the lookup formats and locks on every call, and hot
    paths count every record and publish."""
    return metric.labels(*values)
