"""The dispatcher's own metrics (names herald_<what>_<unit>, low-cardinality labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter(
    "herald_dispatcher_decisions_total",
    "Contact decisions by outcome (sent, deferred, suppressed, failed, ignored) and rule.",
    ["outcome", "rule"],
)
FIRST_CONTACT = Histogram(
    "herald_event_to_first_contact_seconds",
    "From the case change that triggered a contact to its first emitted message.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86_400),
)
VIEW_LAG = Gauge(
    "herald_dispatcher_view_lag_seconds",
    "Age of the newest record applied to a local view, when it was applied.",
    ["topic"],
)
RENDER_ERRORS = Counter(
    "herald_dispatcher_render_errors_total", "Templates that failed to render.", ["channel"]
)
