"""The scheduler's own metrics (low-cardinality labels only)."""

from prometheus_client import Counter, Gauge

TIMERS_FIRED = Counter(
    "herald_scheduler_timers_total", "Timers settled, by kind and outcome.", ["kind", "outcome"]
)
TIMERS_DUE = Gauge("herald_scheduler_timers_due", "Timers due but not yet fired.")
REQUESTS = Counter(
    "herald_scheduler_requests_total", "Contact requests emitted, by trigger kind.", ["trigger"]
)
LEADER = Gauge("herald_scheduler_leader", "1 while this replica holds the schedule lease.")
