"""Ingest on the real broker and database: validation, dedupe, batches, DLQ."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from herald_contracts import CaseChanged, Topics, dlq_topic
from herald_ingest.adapters.repository import CaseRepository
from herald_kit import decode
from support import READ_ONLY_KEY, cloudevent_headers, eventually, read_topic


@pytest.fixture
def ingest_options() -> dict[str, Any]:
    return {"max_batch": 10}


def _event(**data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e-{uuid.uuid4().hex[:8]}",
        "source": "/crm",
        "type": "case.updated",
        "data": {"case_id": "case-1", "customer_ids": ["c1"], "status": "open", **data},
    }


async def test_event_is_projected_and_published(
    ingest: httpx.AsyncClient, infra: dict[str, str], namespace: str
) -> None:
    ev = _event(status="engineer booked")
    r = await ingest.post("/v1/events", json=ev)
    assert r.status_code == 202 and r.json()["accepted"] == 1
    case = (await ingest.get("/v1/cases/case-1")).json()
    assert case["status"] == "engineer booked" and case["version"] == 1
    records = await read_topic(infra["kafka"], Topics.CASES_CHANGES.name(namespace), 1)
    change = decode(records[0], CaseChanged).data
    assert change.state.version == 1 and change.event.id == ev["id"]
    # The same event again is a duplicate and changes nothing.
    r = await ingest.post("/v1/events", json=ev)
    assert r.json()["duplicate"] == 1
    assert (await ingest.get("/v1/cases/case-1")).json()["version"] == 1


async def test_batch_accepts_good_events_and_reports_the_bad_one(
    ingest: httpx.AsyncClient,
) -> None:
    bad = _event()
    del bad["data"]["case_id"]
    r = await ingest.post("/v1/events", json=[_event(status="a"), bad, _event(status="b")])
    body = r.json()
    assert r.status_code == 202
    assert (body["accepted"], body["rejected"]) == (2, 1)
    rejected = body["results"][1]
    assert rejected["result"] == "rejected" and rejected["field"] == "data.case_id"


@pytest.mark.parametrize(
    "content,ctype,status,field",
    [
        (b"{not json", "application/json", 400, "body"),
        (b"<xml/>", "application/xml", 415, "content-type"),
    ],
)
async def test_unparseable_bodies(
    ingest: httpx.AsyncClient, content: bytes, ctype: str, status: int, field: str
) -> None:
    r = await ingest.post("/v1/events", content=content, headers={"content-type": ctype})
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == field


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda e: e["data"].pop("case_id"), "data.case_id"),
        (lambda e: e.update(type="case.exploded"), "type"),
        (lambda e: e.pop("id"), "id"),
        (lambda e: e["data"].update(eta="tomorrow"), "data.eta"),
        # Ids the API reads back as a path segment: with a '/', never readable.
        (lambda e: e["data"].update(case_id="acme/42"), "data.case_id"),
        (lambda e: e["data"].update(customer_ids=["acme/7"]), "data.customer_ids.0"),
        # Valid JSON and ISO 8601 the database cannot hold: refused, not a 500 at storage.
        (lambda e: e["data"].update(sequence=2**63), "data.sequence"),
        (lambda e: e["data"].update(attributes={"score": 10**20}), "data.attributes.score"),
        (lambda e: e["data"].update(attributes={"score": -(2**63) - 1}), "data.attributes.score"),
        # Attribute names the database refuses as field names: a 500 before.
        (lambda e: e["data"].update(attributes={"order.ref": "A-1"}), "data.attributes.order.ref"),
        (lambda e: e["data"].update(attributes={"$x": 1}), "data.attributes.$x"),
        (lambda e: e["data"].update(attributes={"a\x00b": 1}), "data.attributes.a\x00b"),
        (lambda e: e.update(time="0001-01-01T00:00:00+14:00"), "time"),
        # A time in the future (2062 for 2026) would make every later update of the case late.
        (lambda e: e.update(time="2062-05-01T12:00:00Z"), "time"),
        (lambda e: e["data"].update(eta="9999-12-31T23:00:00-14:00"), "data.eta"),
        (
            lambda e: e["data"].update(appointment={"starts_at": "0001-01-01T10:00:00+10:30"}),
            "data.appointment.starts_at",
        ),
    ],
)
async def test_invalid_event_names_the_field_and_stores_nothing(
    ingest: httpx.AsyncClient, mutate: Callable[[dict[str, Any]], Any], field: str
) -> None:
    ev = _event()
    mutate(ev)
    r = await ingest.post("/v1/events", json=ev)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert (await ingest.get("/v1/cases/case-1")).status_code == 404


async def test_the_largest_storable_values_are_accepted(ingest: httpx.AsyncClient) -> None:
    ev = _event(sequence=2**63 - 1, attributes={"low": -(2**63), "high": 2**63 - 1})
    ev["time"] = "0001-01-01T00:00:00-14:00"
    r = await ingest.post("/v1/events", json=ev)
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
    case = (await ingest.get("/v1/cases/case-1")).json()
    assert case["attributes"] == {"low": -(2**63), "high": 2**63 - 1}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_refused_naming_the_field(
    ingest: httpx.AsyncClient, literal: str
) -> None:
    """Not JSON, though Python's parser reads them: stored they would be published as null,
    and NaN, unequal to itself, would make every later event a change of the case."""
    body = json.dumps(_event(attributes={"load": 0.5})).replace("0.5", literal)
    r = await ingest.post(
        "/v1/events", content=body, headers={"content-type": "application/cloudevents+json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "data.attributes.load"
    assert (await ingest.get("/v1/cases/case-1")).status_code == 404


async def test_an_unstorable_event_fails_alone_not_the_events_posted_with_it(
    ingest: httpx.AsyncClient,
) -> None:
    # Concurrent posts share one database batch: an event the database cannot store must be
    # refused on its own, not fail the batch and every other caller's event in it.
    def good(i: int) -> dict[str, Any]:
        return {**_event(status=f"s{i}"), "data": {"case_id": f"case-{i}", "status": "open"}}

    bad = [
        _event(sequence=10**20),
        _event(attributes={"n": 10**20}),
        {**_event(), "time": "0001-01-01T00:00:00+14:00"},
    ]
    answers = await asyncio.gather(
        *(ingest.post("/v1/events", json=b) for b in bad),
        *(ingest.post("/v1/events", json=good(i)) for i in range(6)),
    )
    assert [r.status_code for r in answers] == [422] * 3 + [202] * 6, [r.text for r in answers]
    assert all(r.json()["accepted"] == 1 for r in answers[3:])
    # And in one posted batch, the others are accepted and the bad one reported.
    r = await ingest.post("/v1/events", json=[good(7), bad[0], good(8)])
    assert [x["result"] for x in r.json()["results"]] == ["accepted", "rejected", "accepted"]
    assert r.json()["results"][1]["field"] == "data.sequence"
    for i in (*range(6), 7, 8):
        assert (await ingest.get(f"/v1/cases/case-{i}")).status_code == 200


async def test_an_event_that_breaks_processing_fails_only_its_own_post(
    ingest: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever validation misses, one caller's event must not fail the events other callers
    # posted at the same moment into the same batch.
    from herald_ingest import processing

    real_apply = processing.apply

    def apply(current: Any, data: Any, **kw: Any) -> Any:
        if data.case_id == "case-poison":
            raise OverflowError("a value the database cannot hold")
        return real_apply(current, data, **kw)

    monkeypatch.setattr(processing, "apply", apply)
    poison = {**_event(), "data": {"case_id": "case-poison"}}
    goods = [{**_event(), "data": {"case_id": f"case-{i}", "status": "open"}} for i in range(5)]
    failed, *answers = await asyncio.gather(
        ingest.post("/v1/events", json=poison),
        *(ingest.post("/v1/events", json=g) for g in goods),
        return_exceptions=True,
    )
    assert isinstance(failed, OverflowError)  # the test client re-raises the 500's cause
    assert [r.status_code for r in answers] == [202] * 5, answers
    for i in range(5):
        assert (await ingest.get(f"/v1/cases/case-{i}")).json()["status"] == "open"


async def test_a_batch_answers_per_event_when_one_breaks_processing(
    ingest: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The events before and after the bad one were applied: the caller must learn that,
    # not get a 500 for the whole batch and post it all again.
    from herald_ingest import processing

    real_apply = processing.apply

    def apply(current: Any, data: Any, **kw: Any) -> Any:
        if data.case_id == "case-poison":
            raise OverflowError("a value the database cannot hold")
        return real_apply(current, data, **kw)

    monkeypatch.setattr(processing, "apply", apply)
    batch = [
        {**_event(), "data": {"case_id": "case-a", "status": "open"}},
        {**_event(), "data": {"case_id": "case-poison", "status": "open"}},
        {**_event(), "data": {"case_id": "case-b", "status": "open"}},
    ]
    r = await ingest.post("/v1/events", json=batch)
    assert r.status_code == 202, r.text
    body = r.json()
    assert [x["result"] for x in body["results"]] == ["accepted", "failed", "accepted"]
    assert (body["accepted"], body["failed"]) == (2, 1)
    for case in ("case-a", "case-b"):
        assert (await ingest.get(f"/v1/cases/{case}")).json()["status"] == "open"


@pytest.mark.parametrize("ingest_options", [{"max_batch": 10, "publish_wait_seconds": 0.5}])
async def test_a_broker_that_does_not_acknowledge_answers_503_and_the_retry_announces(
    ingest: httpx.AsyncClient,
    infra: dict[str, str],
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker that is away holds a send for as long as it is away: the post answers 503
    (retry) instead of hanging, and the same event posted again once it is back is announced."""
    app = ingest._transport.app  # type: ignore[attr-defined]
    raw = app.state.runtime.producer.raw

    async def unacknowledged(*args: Any, **kwargs: Any) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()  # never acknowledged

    monkeypatch.setattr(raw, "send", unacknowledged)
    ev = _event(status="engineer booked")
    r = await asyncio.wait_for(ingest.post("/v1/events", json=ev), timeout=30)
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json" and r.headers["retry-after"]
    monkeypatch.undo()  # the broker is back
    r = await ingest.post("/v1/events", json=ev)
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
    records = await read_topic(infra["kafka"], Topics.CASES_CHANGES.name(namespace), 1)
    assert decode(records[0], CaseChanged).data.event.id == ev["id"]


async def test_oversize_batch_is_refused(ingest: httpx.AsyncClient) -> None:
    r = await ingest.post("/v1/events", json=[_event() for _ in range(11)])
    assert r.status_code == 413


async def test_writes_need_the_events_scope(ingest: httpx.AsyncClient) -> None:
    r = await ingest.post("/v1/events", json=_event(), headers={"Authorization": "Bearer x"})
    assert r.status_code == 401


async def test_poison_message_goes_to_dlq_and_consumer_continues(
    ingest: httpx.AsyncClient, infra: dict[str, str], namespace: str
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=infra["kafka"])
    await producer.start()
    topic = Topics.EVENTS_INBOUND.name(namespace)
    good_headers = cloudevent_headers("k-1")
    try:
        await producer.send_and_wait(topic, b"\x00\xffgarbage", key=b"case-9")
        missing = [(k, v) for k, v in good_headers if k != "ce_id"] + [("ce_id", b"k-0")]
        await producer.send_and_wait(topic, b'{"customer_ids": []}', key=b"case-9", headers=missing)
        await producer.send_and_wait(
            topic,
            b'{"case_id": "case-9", "status": "delayed"}',
            key=b"case-9",
            headers=good_headers,
        )
    finally:
        await producer.stop()

    async def projected() -> bool:
        r = await ingest.get("/v1/cases/case-9")
        return r.status_code == 200 and r.json()["status"] == "delayed"

    await eventually(projected, within=20)
    dead = await read_topic(infra["kafka"], dlq_topic("ingest").name(namespace), 2)
    reasons = [dict(r.headers)["x-herald-reason"].decode() for r in dead]
    assert any("ce_type" in reason for reason in reasons)
    assert any("case_id" in reason for reason in reasons)
    assert all(dict(r.headers)["x-herald-source-topic"] == topic.encode() for r in dead)


async def test_an_attribute_name_the_database_refuses_goes_to_the_dlq_naming_it(
    ingest: httpx.AsyncClient, infra: dict[str, str], namespace: str
) -> None:
    headers = cloudevent_headers
    producer = AIOKafkaProducer(bootstrap_servers=infra["kafka"])
    await producer.start()
    topic = Topics.EVENTS_INBOUND.name(namespace)
    try:
        bad = {"case_id": "case-8", "attributes": {"order.ref": "A-1"}}
        await producer.send_and_wait(
            topic, json.dumps(bad).encode(), key=b"case-8", headers=headers("k-1")
        )
        good = {"case_id": "case-9", "status": "delayed"}
        await producer.send_and_wait(
            topic, json.dumps(good).encode(), key=b"case-8", headers=headers("k-2")
        )
    finally:
        await producer.stop()

    async def projected() -> bool:
        return (await ingest.get("/v1/cases/case-9")).status_code == 200

    await eventually(projected, within=20)
    [dead] = await read_topic(infra["kafka"], dlq_topic("ingest").name(namespace), 1)
    found = dict(dead.headers)
    assert found["x-herald-error-kind"] == b"permanent"
    assert found["x-herald-field"] == b"data.attributes.order.ref"
    assert (await ingest.get("/v1/cases/case-8")).status_code == 404


async def test_event_types_have_their_own_rules(ingest: httpx.AsyncClient) -> None:
    booked = _event()
    booked["type"] = "appointment.booked"
    r = await ingest.post("/v1/events", json=booked)
    assert r.status_code == 422 and r.json()["field"] == "data.appointment"
    booked["data"]["appointment"] = {"starts_at": "2026-11-25T14:00:00Z", "engineer": "Ada"}
    assert (await ingest.post("/v1/events", json=booked)).status_code == 202
    resolved = _event()
    resolved["type"] = "case.resolved"
    del resolved["data"]["status"]
    resolved["time"] = datetime.now(UTC).isoformat()  # newer than the booking
    assert (await ingest.post("/v1/events", json=resolved)).status_code == 202
    case = (await ingest.get("/v1/cases/case-1")).json()
    assert case["status"] == "resolved"
    assert case["appointment"]["engineer"] == "Ada"


async def test_same_event_twice_in_one_batch_is_applied_once(ingest: httpx.AsyncClient) -> None:
    ev = _event(status="delayed")
    r = await ingest.post("/v1/events", json=[ev, ev])
    assert [x["result"] for x in r.json()["results"]] == ["accepted", "duplicate"]
    assert (await ingest.get("/v1/cases/case-1")).json()["version"] == 1


async def test_timeline_keeps_a_late_event_without_regressing_state(
    ingest: httpx.AsyncClient,
) -> None:
    new = _event(status="engineer 16:00", sequence=2)
    old = _event(status="engineer 14:00", sequence=1, summary="boiler")
    await ingest.post("/v1/events", json=new)
    await ingest.post("/v1/events", json=old)
    case = (await ingest.get("/v1/cases/case-1")).json()
    assert (case["status"], case["summary"]) == ("engineer 16:00", "boiler")
    items = (await ingest.get("/v1/cases/case-1/timeline")).json()["items"]
    assert sorted(i["data"]["status"] for i in items) == ["engineer 14:00", "engineer 16:00"]
    by_customer = (await ingest.get("/v1/customers/c1/cases")).json()["items"]
    assert [c["case_id"] for c in by_customer] == ["case-1"]


async def test_the_timeline_reads_page_by_page_and_the_status_page_shows_the_newest(
    ingest: httpx.AsyncClient, mongo: Any, db_name: Callable[[str], str]
) -> None:
    """A long case history is read to its newest entry a page at a time (the first 500 alone
    hid the rest); the customer's status page shows the newest entries, not the oldest."""
    start = datetime.now(UTC) - timedelta(minutes=1)
    times = [(start + timedelta(seconds=n)).isoformat() for n in range(5)]
    for n in (3, 0, 4, 1, 2):  # posted out of order: the timeline goes by event time
        ev = _event(status=f"step {n}", sequence=n + 1)
        ev["time"] = times[n]
        assert (await ingest.post("/v1/events", json=ev)).status_code == 202
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        r = await ingest.get("/v1/cases/case-1/timeline", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= 2
        seen += [i["data"]["status"] for i in body["items"]]
        if body["next"] is None:
            break
        params = {"limit": 2, "after": body["next"]}
    assert seen == [f"step {n}" for n in range(5)]
    r = await ingest.get("/v1/cases/case-1/timeline", params={"after": "x"})
    assert r.status_code == 422 and r.json()["field"] == "after"

    repo = CaseRepository(mongo[db_name("ingest")])
    newest = await repo.customer_timeline("case-1", "c1", limit=2)
    assert [i["data"]["status"] for i in newest] == ["step 3", "step 4"]


async def test_reading_cases_needs_the_read_scope(ingest: httpx.AsyncClient) -> None:
    await ingest.post("/v1/events", json=_event())
    r = await ingest.get("/v1/cases/case-1", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = await ingest.get("/v1/cases/case-1", headers={"Authorization": f"Bearer {READ_ONLY_KEY}"})
    assert r.status_code == 200
    r = await ingest.post(
        "/v1/events", json=_event(), headers={"Authorization": f"Bearer {READ_ONLY_KEY}"}
    )
    assert r.status_code == 403
