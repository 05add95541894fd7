"""Apply business events: dedupe, project, record, publish. Shared by HTTP and Kafka intake.

`process_batch` is the hot path: a batch costs a handful of database round trips (claim, timeline,
load, save, mark) and one wait for the broker, whatever its size. `process` handles one event and
is also the fallback for the rare event a batch can't settle (a lost race, a half-finished claim).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import NamedTuple

from aiokafka.errors import KafkaError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from pymongo.errors import ConnectionFailure

from herald_contracts import (
    CASE_CHANGED,
    CASE_STATE,
    CaseChanged,
    CaseEventData,
    CaseState,
    EventRef,
    utc_now,
)
from herald_ingest.adapters.repository import Applied, CaseRepository
from herald_ingest.domain.intake import InboundEvent
from herald_ingest.domain.projection import OrderKey, Projection, apply, is_late, order_key
from herald_kit import (
    Coalescer,
    Doc,
    EventProducer,
    PermanentError,
    RetryableError,
    TraceContext,
    broker_wait,
    current_traceparent,
    encode,
    is_permanent_kafka_error,
    validate_own,
)

log = logging.getLogger("herald.ingest")


# The largest record the kit's producer sends (aiokafka's default `max_request_size`, which
# EventProducer keeps; the broker's default `message.max.bytes` is a little larger).
MAX_RECORD_BYTES = 1_048_576

Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]  # topic, key, value, headers


class Unpublishable(PermanentError):
    """The event's change cannot be published (its case's state would outgrow what the broker
    takes): refused as that event's fault, so its case and every other keep flowing."""

    title = "Change not publishable"


class Change(NamedTuple):
    """A change to announce: the event, the case's state, whether the event was late, and the
    version the event made (the state's own, unless announced again after a crash)."""

    event: InboundEvent
    state: CaseState
    late: bool
    version: int


class Outcome(StrEnum):
    """What became of an event."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


def is_outage(exc: BaseException) -> bool:
    """Whether a failure is the database's or the broker's (or a case contended for too long):
    it passes, and is no event's fault."""
    if isinstance(exc, ConnectionFailure | RetryableError | OSError):
        return True
    return isinstance(exc, KafkaError) and not is_permanent_kafka_error(exc)


def event_doc(event: InboundEvent) -> Doc:
    """What a seen row keeps of an event, so the recovery sweeper can apply it again (in the
    trace it came in with)."""
    doc: Doc = {
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": event.time,
        "data": event.data.model_dump(mode="json", exclude_none=True),
    }
    if event.traceparent is not None:
        doc["traceparent"] = event.traceparent
    return doc


def event_from_doc(doc: Doc) -> InboundEvent:
    """The event a seen row kept (already validated when it was first received)."""
    time = doc.get("time")
    if isinstance(time, datetime) and time.tzinfo is None:
        time = time.replace(tzinfo=UTC)  # the database hands back naive UTC
    return InboundEvent(
        id=doc["id"],
        source=doc["source"],
        type=doc["type"],
        time=time,
        data=validate_own(CaseEventData, doc["data"], kind="seen.data"),
        traceparent=doc.get("traceparent"),  # none in rows kept before traces were
    )


def _key(event: InboundEvent, seen: Doc | None, now: datetime) -> OrderKey:
    """The event's order key. An event without a time of its own ranks by when ingest first
    received it (its claim's time, to the millisecond the database keeps), the same on a retry."""
    received = seen.get("received_at") if seen else None
    if not isinstance(received, datetime):
        received = now.replace(microsecond=now.microsecond // 1000 * 1000)
    elif received.tzinfo is None:
        received = received.replace(tzinfo=UTC)  # the database hands back naive UTC
    return order_key(
        event.data, source=event.source, time=event.time, received=received, event_key=event.key
    )


def _timeline_entry(event: InboundEvent, now: datetime) -> Doc:
    return {
        "_id": f"event|{event.key}",
        "case_id": event.data.case_id,
        "kind": "event",
        "type": event.type,
        "at": event.time or now,
        "received_at": now,
        "data": event.data.model_dump(mode="json", exclude_none=True),
    }


class Processor:
    """Idempotent: a redelivered event is acknowledged, not reapplied; a crash mid-way resumes."""

    def __init__(
        self,
        repo: CaseRepository,
        producer: EventProducer,
        *,
        max_batch: int = 2000,
        max_record_bytes: int = MAX_RECORD_BYTES,
        publish_wait: float | None = None,
    ) -> None:
        self.repo = repo
        self.producer = producer
        self.max_record_bytes = max_record_bytes
        self.publish_wait = publish_wait  # see _send
        # HTTP intake: concurrent requests (often one event each) share process_batch calls,
        # two at most in flight, so a burst of posts costs a few batches, not a batch each.
        self._intake: Coalescer[InboundEvent, Outcome] = Coalescer(
            self._intake_batch, window=0.002, max_batch=max_batch, max_in_flight=2
        )

    async def submit(self, events: Sequence[InboundEvent]) -> list[Outcome | Exception]:
        """process_batch for one caller's events, batched with other callers' (their order
        kept); outcomes in the order given, or the error an event met: one event's failure
        must not hide what became of the others, which may have been applied.

        The batch is applied outside the caller's task, so each event takes the caller's trace
        (the request's) with it, unless it came with one of its own.
        """
        trace = current_traceparent()
        if trace is not None:
            events = [
                e if e.traceparent else e.model_copy(update={"traceparent": trace}) for e in events
            ]
        answers = await asyncio.gather(
            *(self._intake.call(e) for e in events), return_exceptions=True
        )
        out: list[Outcome | Exception] = []
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer  # a cancellation, not an answer
            out.append(answer)
        return out

    async def _intake_batch(self, events: list[InboundEvent]) -> list[Outcome | BaseException]:
        try:
            outcomes: list[Outcome | BaseException] = [*await self.process_batch(events)]
        except (ConnectionFailure, KafkaError, RetryableError):
            raise  # an outage: every caller of the batch sees it and may retry
        except Exception as exc:
            # Something in one caller's event that validation let through: the batch holds
            # other callers' events, so each is settled on its own (processing is idempotent,
            # and `process` finishes what the batch left half-done) and only the culprit fails.
            log.warning(
                "intake batch failed; applying its events one by one",
                extra={"events": len(events), "error": type(exc).__name__},
            )
            outcomes = []
            for event in events:
                try:
                    outcomes.append(await self.process(event))
                except Exception as one:  # reaches that event's caller alone
                    outcomes.append(one)
        return outcomes

    async def process(self, event: InboundEvent, *, now: datetime | None = None) -> Outcome:
        """Apply the event and publish the change; safe to call again for the same event."""
        now = now or utc_now()
        seen = await self.repo.claim(
            event.key, case_id=event.data.case_id, now=now, event=event_doc(event)
        )
        if seen is not None and seen.get("status") in ("applied", "unchanged"):
            return Outcome.DUPLICATE
        await self.repo.add_timeline(_timeline_entry(event, now))
        key = _key(event, seen, now)
        for _ in range(20):
            current, stored_version, last_events = await self.repo.load(event.data.case_id)
            if event.key in last_events and current.state is not None:
                # An earlier attempt saved this event but crashed before publishing or before
                # recording that it had: announce it again as it was announced then.
                made = last_events[event.key]
                if made is None:  # saved by an older ingest, which kept only the event's key
                    made = (current.state.version, is_late(current, key))
                version, late = made
                if version is None:  # it only kept newer order keys: nothing to announce
                    await self.repo.mark(event.key, "unchanged", stored_version)
                    return Outcome.ACCEPTED
                await self._publish([Change(event, current.state, late, version)])
                await self.repo.mark(event.key, "applied", version)
                return Outcome.ACCEPTED
            nxt = apply(current, event.data, key=key, now=now)
            if nxt is None or nxt.state is None or not nxt.state_changed:
                if nxt is not None and nxt.state is not None:
                    # Same state, newer order keys: keep them so older events cannot regress it.
                    kept = (event.key, None, False)
                    if not await self.repo.save(nxt, expected=stored_version, applied=kept):
                        continue
                await self.repo.mark(event.key, "unchanged", stored_version)
                return Outcome.ACCEPTED
            try:
                records = self._encode(Change(event, nxt.state, nxt.late, nxt.state.version))
            except Unpublishable:
                # Refused before anything of it was stored: as if never received, so the
                # case is not left holding a state it can never announce.
                await self.repo.forget_events([event.key])
                raise
            made_now = (event.key, nxt.state.version, nxt.late)
            if await self.repo.save(nxt, expected=stored_version, applied=made_now):
                refused = await self._send([(event.key, records)])
                if refused:
                    raise refused[event.key]
                await self.repo.mark(event.key, "applied", nxt.state.version)
                return Outcome.ACCEPTED
        raise RetryableError(f"case {event.data.case_id} is contended; retry")

    async def process_batch(self, events: Sequence[InboundEvent]) -> list[Outcome | PermanentError]:
        """Apply many events with a few round trips; outcomes in the order given.

        An event whose case could not be announced with it (its change too large for the
        broker, or refused by it for good) gets its error as its outcome; the other events,
        of its case and of others, go on.
        """
        now = utc_now()
        outcomes: dict[int, Outcome | PermanentError] = {}
        first_of: dict[str, int] = {}
        fresh: list[int] = []
        for i, event in enumerate(events):
            if event.key in first_of:
                outcomes[i] = Outcome.DUPLICATE  # the same event twice in one batch
            else:
                first_of[event.key] = i
                fresh.append(i)
        claims = [
            {
                "_id": events[i].key,
                "case_id": events[i].data.case_id,
                "status": "received",
                "received_at": now,
                "event": event_doc(events[i]),
            }
            for i in fresh
        ]
        earlier = await self.repo.claim_many(claims)
        todo: list[int] = []
        slow: list[int] = []
        for i in fresh:
            row = earlier.get(events[i].key)
            if row is None:
                todo.append(i)
            elif row.get("status") in ("applied", "unchanged"):
                outcomes[i] = Outcome.DUPLICATE
            else:
                slow.append(i)  # claimed before but never finished: the careful path heals it
        await self.repo.add_timeline_many([_timeline_entry(events[i], now) for i in todo])

        by_case: dict[str, list[int]] = {}
        for i in todo:
            by_case.setdefault(events[i].data.case_id, []).append(i)
        loaded = await self.repo.load_many(list(by_case))
        writes: list[tuple[Projection, int, list[Applied]]] = []
        # Each case's changes, encoded before the write so that one too large is refused
        # before anything of it is stored.
        sends: dict[str, list[tuple[str, list[Record]]]] = {}
        marks: dict[str, list[tuple[str, str, int | None]]] = {}
        refused: list[str] = []
        for case_id, indexes in by_case.items():
            projection, stored = loaded.get(case_id, (Projection(None, {}), 0))
            start = projection
            applied: list[Applied] = []
            for i in indexes:
                event = events[i]
                key = _key(event, None, now)
                nxt = apply(projection, event.data, key=key, now=now)
                outcomes[i] = Outcome.ACCEPTED
                if nxt is None:
                    marks.setdefault(case_id, []).append((event.key, "unchanged", stored))
                    continue
                if nxt.state_changed and nxt.state is not None:
                    version = nxt.state.version
                    try:
                        records = self._encode(Change(event, nxt.state, nxt.late, version))
                    except Unpublishable as exc:
                        outcomes[i] = exc  # the case goes on without it
                        refused.append(event.key)
                        continue
                    projection = nxt
                    applied.append((event.key, version, nxt.late))
                    sends.setdefault(case_id, []).append((event.key, records))
                    marks.setdefault(case_id, []).append((event.key, "applied", version))
                else:
                    projection = nxt
                    applied.append((event.key, None, False))
                    version = projection.state.version if projection.state else stored
                    marks.setdefault(case_id, []).append((event.key, "unchanged", version))
            if projection is not start and projection.state is not None:
                writes.append((projection, stored, applied))
        if refused:
            # Nothing of a refused event is kept: its caller may send it again once the case
            # has room (fewer or shorter attributes), and the sweeper has nothing to retry.
            await self.repo.forget_events(refused)
        lost = await self.repo.save_many(writes)
        for case_id in lost:
            # Someone else wrote the case meanwhile: apply its events one by one instead.
            slow.extend(by_case[case_id])
            sends.pop(case_id, None)
            marks.pop(case_id, None)
        failed = await self._send([s for case_sends in sends.values() for s in case_sends])
        for event_key, refusal in failed.items():
            # Stored but refused by the broker for good: that event's answer, not an outage
            # for the batch. Left unfinished, so the sweeper tries once more to announce it.
            outcomes[first_of[event_key]] = refusal
        await self.repo.mark_many(
            [m for case_marks in marks.values() for m in case_marks if m[0] not in failed]
        )
        for i in sorted(slow):
            try:
                outcomes[i] = await self.process(events[i], now=now)
            except PermanentError as exc:
                outcomes[i] = exc
        return [outcomes[i] for i in range(len(events))]

    async def _publish(self, changes: Sequence[Change]) -> None:
        """Publish changes (see `_send`); the first refused one raises."""
        refused = await self._send([(c.event.key, self._encode(c)) for c in changes])
        if refused:
            raise next(iter(refused.values()))

    def _encode(self, change: Change) -> list[Record]:
        """A change and the case's snapshot as records; Unpublishable if either is larger than
        the broker takes (checked as the producer would, before the case is written).

        A late change (its event older than news the case already had) still publishes the
        merged state, marked `late`, so the scheduler does not announce its event as news.

        Both records are published in the event's trace (a new one when it came with none),
        never in the trace of whatever task applies the batch.
        """
        event, state, late, version = change
        announced = state
        if version != state.version:
            # Announced again after a crash, an event keeps the version it made (what the
            # scheduler's trigger key is made of), though the state is the newest by then.
            announced = state.model_copy(update={"version": version})
        body = CaseChanged(
            event=EventRef(id=event.id, source=event.source, type=event.type, time=event.time),
            state=announced,
            late=late,
        )
        key = state.case_id.encode()
        records: list[Record] = []
        trace = TraceContext.parse(event.traceparent) or TraceContext.new()
        for et, data, eid in (
            (CASE_CHANGED, body, f"{state.case_id}:{version}"),
            (CASE_STATE, state, f"{state.case_id}:{state.version}"),
        ):
            headers, value = encode(
                et,
                data,
                source=self.producer.source,
                event_id=eid,
                subject=state.case_id,
                trace=trace.child(),
            )
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
            if size > self.max_record_bytes:
                raise Unpublishable(
                    f"with this event the case's state would take {size} bytes on the broker, "
                    f"over the {self.max_record_bytes} it takes: send fewer or shorter "
                    "attributes",
                    field="data",
                )
            records.append((self.producer.topic_name(et.topic), key, value, headers))
        return records

    async def _send(self, changes: Sequence[tuple[str, list[Record]]]) -> dict[str, Unpublishable]:
        """Send each event's records; wait once for all acknowledgements. The events whose
        records the broker refused for good (too large for a topic's own limit, say), each with
        why: that is the event's fault, not an outage, and the other events' records still go.
        An outage raises.

        Sends are queued in order (one case's versions stay in order on its partition) and
        awaited together, so a batch costs one round trip to the broker rather than one each.

        The wait is bounded (`publish_wait`): a broker that is away would hold the request, or
        the intake batch every concurrent request shares, for the whole outage. Past it the
        outage raises as KafkaTimeoutError; the events stay stored unfinished, and a retry
        (HTTP caller, consumer) or the sweeper announces them.
        """
        async with broker_wait(self.publish_wait):
            return await self._send_all(changes)

    async def _send_all(
        self, changes: Sequence[tuple[str, list[Record]]]
    ) -> dict[str, Unpublishable]:
        raw = self.producer.raw
        pending: list[tuple[str, asyncio.Future[object]]] = []
        refused: dict[str, Unpublishable] = {}
        for event_key, records in changes:
            for topic, key, value, headers in records:
                try:
                    sent = await raw.send(topic, value, key=key, headers=list(headers))
                except KafkaError as exc:
                    if not is_permanent_kafka_error(exc):
                        raise
                    refused.setdefault(event_key, _refused(exc))
                    continue
                pending.append((event_key, sent))
        if not pending:
            return refused
        results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        for (event_key, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                if not is_permanent_kafka_error(result):
                    raise result
                refused.setdefault(event_key, _refused(result))
        return refused


def _refused(exc: BaseException) -> Unpublishable:
    return Unpublishable(
        f"the broker refused the case's change with this event: {type(exc).__name__}",
        field="data",
    )
