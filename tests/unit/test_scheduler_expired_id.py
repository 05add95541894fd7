"""The scheduler's `suppressed` status for an expired request is the dispatcher's own event."""

from __future__ import annotations

from herald_dispatcher.policy import derived_id
from herald_scheduler.messaging.timers import suppressed_id


def test_expired_in_a_timer_has_the_id_the_dispatcher_would_give_it() -> None:
    # Stats count a suppression once per request; the same event id also keeps consumers
    # that dedupe by event id from seeing two.
    assert suppressed_id("req-1") == derived_id("req-1", "suppressed")
    assert suppressed_id("req-1") != suppressed_id("req-2")
