"""Ingest on the real broker and database: the stored case keeps the newest news, whichever way
its events are numbered, timed or delivered."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaTimeoutError
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from herald_contracts import Appointment, CaseChanged, CaseEventData, Topic, Topics
from herald_ingest.adapters.repository import CaseRepository
from herald_ingest.domain.intake import InboundEvent
from herald_ingest.domain.projection import Projection
from herald_ingest.processing import Outcome, Processor
from herald_kit import decode
from support import case_event, read_topic


async def _post_one_by_one(client: httpx.AsyncClient, *events: dict[str, Any]) -> None:
    for event in events:
        r = await client.post("/v1/events", json=event)
        assert r.status_code == 202 and r.json()["accepted"] == 1, r.text


async def _case(client: httpx.AsyncClient, case_id: str) -> dict[str, Any]:
    r = await client.get(f"/v1/cases/{case_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_the_stored_case_keeps_the_newest_news(ingest: httpx.AsyncClient) -> None:
    run = uuid.uuid4().hex[:8]
    # Without sequence or time, the later arrival is newer: "evt-10" sorts before "evt-9".
    untimed = f"untimed-{run}"
    await _post_one_by_one(
        ingest,
        case_event(untimed, "evt-9", status="engineer on the way"),
        case_event(untimed, "evt-10", status="resolved"),
    )
    assert (await _case(ingest, untimed))["status"] == "resolved"

    # A timed event does not outrank the same source's later numbered events.
    mixed = f"mixed-{run}"
    await _post_one_by_one(
        ingest,
        case_event(mixed, "m-0", status="open", time="2026-11-24T09:00:00Z"),
        case_event(mixed, "m-1", status="booked", sequence=1, time="2026-11-24T10:00:00Z"),
        case_event(mixed, "m-2", status="resolved", sequence=2, time="2026-11-24T11:00:00Z"),
    )
    assert (await _case(ingest, mixed))["status"] == "resolved"

    # Large sequences are kept exact through the database: the older one arrives late.
    big = 1_732_435_200_000_000_001
    large = f"large-{run}"
    await _post_one_by_one(
        ingest,
        case_event(large, "l-new", status="resolved", sequence=big + 1),
        case_event(large, "l-old", status="open", sequence=big),
    )
    case = await _case(ingest, large)
    assert (case["status"], case["version"]) == ("resolved", 1)


async def _changes_of(infra: dict[str, str], namespace: str, case_id: str, n: int) -> list[Any]:
    def of_the_case(record: Any) -> bool:
        return decode(record, CaseChanged).data.state.case_id == case_id

    topic = Topics.CASES_CHANGES.name(namespace)
    records = await read_topic(infra["kafka"], topic, n, keep=of_the_case)
    return [decode(record, CaseChanged).data for record in records]


async def test_a_late_event_updates_the_state_but_its_change_is_marked_late(
    ingest: httpx.AsyncClient, infra: dict[str, str], namespace: str
) -> None:
    case_id = f"late-{uuid.uuid4().hex[:8]}"
    booking = {"starts_at": "2026-11-25T14:00:00Z"}
    await _post_one_by_one(
        ingest,
        case_event(case_id, "e1", type_="case.opened", sequence=1),
        case_event(case_id, "e3", type_="case.resolved", sequence=3),
        # Sequence 2 arrives after the case was resolved.
        case_event(case_id, "e2", type_="appointment.booked", sequence=2, appointment=booking),
    )
    changes = await _changes_of(infra, namespace, case_id, 3)
    assert [(c.event.id, c.state.version, c.late) for c in changes] == [
        ("e1", 1, False),
        ("e3", 2, False),
        ("e2", 3, True),
    ]
    # The merged state is still published: resolved, and the booking filled in.
    assert changes[-1].state.status == "resolved" and changes[-1].state.appointment is not None


class _Broker:
    """Stands in for the producer: records what would be published, acknowledged at once."""

    source = "ingest"

    def __init__(self) -> None:
        self.raw = self
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def topic_name(self, topic: Topic) -> str:
        return topic.base

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        self.sent.append((topic, json.loads(value)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _SlowAfterRead(CaseRepository):
    """A repository whose batch reads pause until released (a slow request)."""

    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self.read = asyncio.Event()
        self.release = asyncio.Event()

    async def load_many(self, case_ids: Sequence[str]) -> dict[str, tuple[Projection, int]]:
        out = await super().load_many(case_ids)
        self.read.set()
        await self.release.wait()
        return out


def _inbound(event_id: str, **data: Any) -> InboundEvent:
    return InboundEvent(
        id=event_id,
        source="/crm",
        type="case.updated",
        time=datetime(2026, 11, 24, 9, 0, tzinfo=UTC),
        data=CaseEventData(case_id="race-1", customer_ids=["c1"], **data),
    )


async def test_the_same_event_by_http_and_kafka_publishes_no_version_that_was_not_stored(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    db = mongo[db_name("ingest")]
    broker = _Broker()
    kafka = Processor(CaseRepository(db), broker)  # type: ignore[arg-type]
    slow = _SlowAfterRead(db)
    http = Processor(slow, broker)  # type: ignore[arg-type]
    await kafka.process_batch([_inbound("e0", sequence=0, status="open")])  # version 1
    same = _inbound("eE", sequence=2, summary="engineer booked 14:00")

    by_http = asyncio.create_task(http.process_batch([same]))  # reads version 1, then stalls
    await slow.read.wait()
    await kafka.process_batch([_inbound("eF", sequence=1, status="engineer on the way")])  # v2
    await kafka.process_batch([same])  # its claim is unfinished: the careful path, version 3
    slow.release.set()
    await by_http

    stored = await CaseRepository(db).get("race-1")
    assert stored is not None
    assert (stored.version, stored.status) == (3, "engineer on the way")
    snapshots = [body for topic, body in broker.sent if topic == Topics.CASES_STATE.base]
    # One snapshot per stored version, in order; none of a version 2 that says "open".
    assert [(s["version"], s["status"]) for s in snapshots] == [
        (1, "open"),
        (2, "engineer on the way"),
        (3, "engineer on the way"),
    ]


class _Failing(CaseRepository):
    """A repository that fails to record how events ended, once (a crash after publishing)."""

    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self.fail = True

    async def mark_many(self, marks: Sequence[tuple[str, str, int | None]]) -> None:
        if self.fail:
            self.fail = False
            raise AutoReconnect("the database went away after the publish")
        await super().mark_many(marks)


class _FailingBroker(_Broker):
    """A broker that refuses the first send (a crash after the save, before publishing)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        if self.fail:
            self.fail = False
            raise KafkaTimeoutError()
        return await super().send(topic, value, key, headers)


@pytest.mark.parametrize("crash", ["after-publishing", "before-publishing"])
async def test_events_of_a_batch_healed_after_a_crash_are_announced_as_they_were_made(
    crash: str, mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    """Two events of one case in one poll, and a crash after the case was saved: the retry
    announces each with the version it made and the late flag it had, not the case's final
    version (a second trigger key: the booking announced twice) nor lateness judged against
    the other event of the same write (the booking never announced)."""
    db = mongo[db_name("ingest")]
    broker = _FailingBroker() if crash == "before-publishing" else _Broker()
    repo = _Failing(db) if crash == "after-publishing" else CaseRepository(db)
    broker.fail = crash == "before-publishing"
    processor = Processor(repo, broker)  # type: ignore[arg-type]
    at = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    # After publishing, the summary is older news than the booking (so it was late); before,
    # newer (so the booking, re-judged against it, would look late and never be announced).
    summary_at = at + (
        timedelta(seconds=-1) if crash == "after-publishing" else timedelta(seconds=1)
    )
    booked = InboundEvent(
        id="booked",
        source="/crm",
        type="appointment.booked",
        time=at,
        data=CaseEventData(
            case_id="heal-1", customer_ids=["c1"], appointment=Appointment(starts_at=at)
        ),
    )
    summary = InboundEvent(
        id="summary",
        source="/crm",
        type="case.updated",
        time=summary_at,
        data=CaseEventData(case_id="heal-1", summary="boiler"),
    )
    with pytest.raises((AutoReconnect, KafkaTimeoutError)):
        await processor.process_batch([booked, summary])
    # What the consumer's per-record fallback, a redelivery or the sweeper does next.
    for event in (booked, summary):
        assert await processor.process(event) == Outcome.ACCEPTED

    made = {"booked": (1, False), "summary": (2, crash == "after-publishing")}
    changes = [body for topic, body in broker.sent if topic == Topics.CASES_CHANGES.base]
    announced = {(c["event"]["id"], c["state"]["version"], c["late"]) for c in changes}
    assert announced == {(event_id, v, late) for event_id, (v, late) in made.items()}
    stored = await CaseRepository(db).get("heal-1")
    assert stored is not None and stored.version == 2


async def test_a_case_saved_with_the_older_record_of_its_last_events_still_heals(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    db = mongo[db_name("ingest")]
    broker = _Broker()
    repo = _Failing(db)
    processor = Processor(repo, broker)  # type: ignore[arg-type]
    event = _inbound("old-1", status="engineer booked")
    with pytest.raises(AutoReconnect):
        await processor.process_batch([event])
    # As an older ingest stored it: the event keys alone.
    await db["cases"].update_one({"_id": "race-1"}, {"$set": {"last_events": [event.key]}})
    broker.sent.clear()
    assert await processor.process(event) == Outcome.ACCEPTED
    [change] = [body for topic, body in broker.sent if topic == Topics.CASES_CHANGES.base]
    assert (change["event"]["id"], change["state"]["version"], change["late"]) == (
        "old-1",
        1,
        False,
    )
    assert await processor.process(event) == Outcome.DUPLICATE
