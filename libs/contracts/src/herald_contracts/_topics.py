"""Kafka topics: names, keys and cleanup policies, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DAY_MS = 24 * 60 * 60 * 1000

# How long a compacted topic keeps a superseded record before the cleaner may drop it. A
# scheduled fire pins the end offsets of contacts.preferences.v1 (and cases.state.v1) when it
# starts and reads each key's latest record below the pin, possibly hours later (a paced fire, a
# resume after a crash or a pause); a record written after the pin must not let the cleaner drop
# the one below it before then, or that customer (case) drops out of the fire. Far longer than
# the longest fire plus its resume window.
MIN_COMPACTION_LAG_MS = 7 * DAY_MS


class Cleanup(StrEnum):
    """Kafka cleanup policy."""

    DELETE = "delete"
    COMPACT = "compact"


@dataclass(frozen=True, slots=True)
class Topic:
    """One topic of the architecture, before a namespace is applied."""

    base: str
    key: str
    cleanup: Cleanup
    retention_ms: int | None
    partitions: int = 6
    description: str = ""

    def name(self, namespace: str = "") -> str:
        """The topic's name under a namespace ('' in production, a unique prefix in tests)."""
        return f"{namespace}{self.base}"

    def configs(self) -> dict[str, str]:
        """Topic-level configuration for the admin client."""
        cfg = {"cleanup.policy": self.cleanup.value}
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        if self.cleanup is Cleanup.COMPACT:
            # Compact promptly so a restarted local view reads little history.
            cfg["min.cleanable.dirty.ratio"] = "0.1"
            cfg["segment.ms"] = str(DAY_MS)
            cfg["min.compaction.lag.ms"] = str(MIN_COMPACTION_LAG_MS)
        return cfg


class Topics:
    """The topics named in ARCHITECTURE.md."""

    EVENTS_INBOUND = Topic(
        "events.inbound.v1",
        "case id",
        Cleanup.DELETE,
        7 * DAY_MS,
        description="Business events from backend systems.",
    )
    CASES_CHANGES = Topic(
        "cases.changes.v1",
        "case id",
        Cleanup.DELETE,
        7 * DAY_MS,
        description="Each applied change: the event, the resulting case state and its version.",
    )
    CASES_STATE = Topic(
        "cases.state.v1",
        "case id",
        Cleanup.COMPACT,
        None,
        description="Latest state of each case.",
    )
    CONTACTS_PREFERENCES = Topic(
        "contacts.preferences.v1",
        "customer id",
        Cleanup.COMPACT,
        None,
        description="Full preference snapshot per customer; a tombstone on erase.",
    )
    CONTACT_REQUESTS = Topic(
        "contact.requests.v1",
        "customer id",
        Cleanup.DELETE,
        7 * DAY_MS,
        description="Requests to contact a customer, from the scheduler.",
    )
    TIMERS_REQUESTS = Topic(
        "timers.requests.v1",
        "customer id",
        Cleanup.DELETE,
        7 * DAY_MS,
        description="Durable timers asked of the scheduler (deferrals, escalation timeouts).",
    )
    OUTBOUND_SMS = Topic(
        "outbound.sms.v1",
        "customer id",
        Cleanup.DELETE,
        7 * DAY_MS,
        description="Rendered SMS to send.",
    )
    OUTBOUND_EMAIL = Topic(
        "outbound.email.v1",
        "customer id",
        Cleanup.DELETE,
        7 * DAY_MS,
        description="Rendered emails to send.",
    )
    OUTBOUND_VOICE = Topic(
        "outbound.voice.v1",
        "customer id",
        Cleanup.DELETE,
        7 * DAY_MS,
        description="Rendered IVR calls to place.",
    )
    DELIVERY_STATUS = Topic(
        "delivery.status.v1",
        "customer id",
        Cleanup.DELETE,
        7 * DAY_MS,
        description=(
            "Every status of every message, from the senders; and, status `suppressed`, each "
            "contact the dispatcher decided against."
        ),
    )
    ENGAGEMENT_REPLIES = Topic(
        "engagement.replies.v1",
        "customer id",
        Cleanup.DELETE,
        7 * DAY_MS,
        description="Customer replies: keywords, keypad presses, clicks, unsubscribes.",
    )

    @classmethod
    def all(cls) -> tuple[Topic, ...]:
        """Every topic except the per-group DLQs."""
        return tuple(v for v in vars(cls).values() if isinstance(v, Topic))

    @classmethod
    def outbound(cls, channel: str) -> Topic:
        """The outbound topic of a channel."""
        return {"sms": cls.OUTBOUND_SMS, "email": cls.OUTBOUND_EMAIL, "voice": cls.OUTBOUND_VOICE}[
            channel
        ]


def dlq_topic(group: str) -> Topic:
    """The dead-letter topic of one consumer group."""
    return Topic(f"dlq.{group}.v1", "as source", Cleanup.DELETE, 14 * DAY_MS, partitions=1)
