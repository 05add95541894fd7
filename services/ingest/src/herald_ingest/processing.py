"""Apply one business event: dedupe, project, record, publish. Shared by HTTP and Kafka intake."""

from __future__ import annotations

import logging
from enum import StrEnum

from herald_contracts import CASE_CHANGED, CASE_STATE, CaseChanged, CaseState, EventRef, utc_now
from herald_ingest.adapters.repository import CaseRepository
from herald_ingest.domain.intake import InboundEvent
from herald_ingest.domain.projection import apply, order_key
from herald_kit import EventProducer, RetryableError

log = logging.getLogger("herald.ingest")


class Outcome(StrEnum):
    """What became of an event."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


class Processor:
    """Idempotent: a redelivered event is acknowledged, not reapplied; a crash mid-way resumes."""

    def __init__(self, repo: CaseRepository, producer: EventProducer) -> None:
        self.repo = repo
        self.producer = producer

    async def process(self, event: InboundEvent) -> Outcome:
        """Apply the event and publish the change; safe to call again for the same event."""
        now = utc_now()
        seen = await self.repo.claim(event.key, case_id=event.data.case_id, now=now)
        if seen is not None and seen.get("status") in ("applied", "unchanged"):
            return Outcome.DUPLICATE
        await self.repo.add_timeline(
            {
                "_id": f"event|{event.key}",
                "case_id": event.data.case_id,
                "kind": "event",
                "type": event.type,
                "at": event.time or now,
                "received_at": now,
                "data": event.data.model_dump(mode="json", exclude_none=True),
            }
        )
        key = order_key(event.data, time=event.time, event_key=event.key)
        for _ in range(20):
            current, stored_version, last_event = await self.repo.load(event.data.case_id)
            if last_event == event.key and current.state is not None:
                # An earlier attempt saved this event but crashed before publishing.
                await self._publish(event, current.state)
                await self.repo.mark(event.key, "applied", current.state.version)
                return Outcome.ACCEPTED
            nxt = apply(current, event.data, key=key, now=now)
            if nxt is None or nxt.state is None or not nxt.state_changed:
                if nxt is not None and nxt.state is not None:
                    # Same state, newer order keys: keep them so older events cannot regress it.
                    if not await self.repo.save(nxt, expected=stored_version, event_key=event.key):
                        continue
                await self.repo.mark(event.key, "unchanged", stored_version)
                return Outcome.ACCEPTED
            if await self.repo.save(nxt, expected=stored_version, event_key=event.key):
                await self._publish(event, nxt.state)
                await self.repo.mark(event.key, "applied", nxt.state.version)
                return Outcome.ACCEPTED
        raise RetryableError(f"case {event.data.case_id} is contended; retry")

    async def _publish(self, event: InboundEvent, state: CaseState) -> None:
        change = CaseChanged(
            event=EventRef(id=event.id, source=event.source, type=event.type, time=event.time),
            state=state,
        )
        eid = f"{state.case_id}:{state.version}"
        await self.producer.publish(
            CASE_CHANGED, change, key=state.case_id, event_id=eid, subject=state.case_id
        )
        await self.producer.publish(
            CASE_STATE, state, key=state.case_id, event_id=eid, subject=state.case_id
        )
