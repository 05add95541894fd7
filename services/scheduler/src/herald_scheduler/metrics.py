"""The scheduler's own metrics (low-cardinality labels only)."""

from prometheus_client import Counter, Gauge

TIMERS_FIRED = Counter(
    "herald_scheduler_timers_total", "Timers settled, by kind and outcome.", ["kind", "outcome"]
)
# Exported at 0 from the start, so the first timer given up is an increase HeraldTimersFailing
# sees (a series that appears at 1 has none).
for _kind in ("timer", "delay", "coalesce", "callback"):
    TIMERS_FIRED.labels(_kind, "failed")
TIMERS_DUE = Gauge("herald_scheduler_timers_due", "Timers due but not yet fired.")
REQUESTS = Counter(
    "herald_scheduler_requests_total", "Contact requests emitted, by trigger kind.", ["trigger"]
)
LEADER = Gauge("herald_scheduler_leader", "1 while this replica holds the schedule lease.")
JOB_STORE_ERRORS = Counter(
    "herald_scheduler_job_store_errors_total",
    "Job store calls of the schedule leader's APScheduler thread that failed (retried shortly).",
)
