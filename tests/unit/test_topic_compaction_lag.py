"""The compacted topics keep a superseded record long enough for a scheduled fire to read it."""

from __future__ import annotations

from herald_contracts import Cleanup, Topics
from herald_contracts._topics import DAY_MS
from herald_kit import all_topics


def test_compacted_topics_keep_the_snapshot_a_pinned_fire_reads() -> None:
    # A fire pins the end offsets at its start and may read below the pins hours later (pacing,
    # a resume). Kafka's default lag of 0 lets the cleaner drop a customer's snapshot below the
    # pin as soon as a newer one lands after it, and the customer drops out of the fire.
    compacted = [t for t in all_topics() if t.cleanup is Cleanup.COMPACT]
    assert {t.base for t in compacted} >= {
        Topics.CONTACTS_PREFERENCES.base,
        Topics.CASES_STATE.base,
    }
    for topic in compacted:
        lag = int(topic.configs().get("min.compaction.lag.ms", "0"))
        assert lag >= 7 * DAY_MS, topic.base
