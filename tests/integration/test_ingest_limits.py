"""Ingest on the real broker and database: an event that would make its case's change larger
than the broker takes is refused on its own, and its case, other cases and the sweeper go on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from fastapi import FastAPI
from pymongo import AsyncMongoClient

from herald_contracts import (
    ATTRIBUTE_TEXT_MAX,
    ATTRIBUTES_MAX,
    CaseEventData,
    Topic,
    Topics,
    dlq_topic,
)
from herald_ingest.adapters.repository import CaseRepository
from herald_ingest.app import create_app
from herald_ingest.domain.intake import InboundEvent
from herald_ingest.processing import Outcome, Processor, Unpublishable, event_doc
from support import cloudevent_headers, eventually, ingest_settings, read_topic, running

# Events of the most attributes an event may carry, each of the longest text: about 100 KB of
# state each, so the eleventh would take a case past the producer's 1 MiB record.
FULL = 10


def _attributes(n: int) -> dict[str, str]:
    return {f"e{n}-{i}": "x" * ATTRIBUTE_TEXT_MAX for i in range(ATTRIBUTES_MAX)}


def _event(case_id: str, event_id: str, **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "/crm",
        "type": "case.updated",
        "data": {"case_id": case_id, "customer_ids": ["c1"], **data},
    }


@pytest.fixture
async def app(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> AsyncIterator[FastAPI]:
    yield create_app(
        ingest_settings(
            infra,
            namespace,
            db_name("ingest"),
            recover_after_seconds=1,
            sweep_interval_seconds=3600,  # the test drives sweeps itself
        )
    )


@pytest.fixture
async def ingest(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as client:
        yield client


async def _fill(ingest: httpx.AsyncClient, case_id: str) -> None:
    """Bring a case to just under the broker's record size."""
    for n in range(FULL):
        r = await ingest.post(
            "/v1/events", json=_event(case_id, f"fill-{n}", attributes=_attributes(n))
        )
        assert r.status_code == 202 and r.json()["accepted"] == 1, r.text


async def test_an_event_that_would_outgrow_the_broker_is_refused_and_its_case_flows_on(
    ingest: httpx.AsyncClient,
) -> None:
    await _fill(ingest, "big")
    overflow = _event("big", "overflow", attributes=_attributes(FULL))
    r = await ingest.post("/v1/events", json=overflow)
    # Not a 503 that the caller retries for ever while the case holds a state it can never
    # announce, jamming every later event of the case.
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == "data"
    case = (await ingest.get("/v1/cases/big")).json()
    assert case["version"] == FULL and f"e{FULL}-0" not in case["attributes"]
    items = (await ingest.get("/v1/cases/big/timeline", params={"limit": 500})).json()["items"]
    assert len(items) == FULL  # the refused event is not in it
    assert all(f"e{FULL}-0" not in entry["data"]["attributes"] for entry in items)
    # Nothing of it was kept: sent again, it is refused again rather than called a duplicate.
    assert (await ingest.post("/v1/events", json=overflow)).status_code == 422

    # The case and the others go on, and a batch answers per event.
    r = await ingest.post("/v1/events", json=_event("big", "small", status="engineer booked"))
    assert r.status_code == 202 and r.json()["accepted"] == 1
    batch = [_event("other", "o-1", status="open"), overflow, _event("big", "s-2", summary="ok")]
    r = await ingest.post("/v1/events", json=batch)
    assert r.status_code == 202, r.text
    results = r.json()["results"]
    assert [x["result"] for x in results] == ["accepted", "rejected", "accepted"]
    assert results[1]["field"] == "data"
    case = (await ingest.get("/v1/cases/big")).json()
    assert (case["version"], case["status"], case["summary"]) == (FULL + 2, "engineer booked", "ok")


async def test_over_kafka_the_event_goes_to_the_dlq_and_the_case_flows_on(
    ingest: httpx.AsyncClient, infra: dict[str, str], namespace: str
) -> None:
    headers = cloudevent_headers
    producer = AIOKafkaProducer(bootstrap_servers=infra["kafka"], max_request_size=2**21)
    await producer.start()
    topic = Topics.EVENTS_INBOUND.name(namespace)
    try:
        for n in range(FULL + 1):
            body = {"case_id": "big", "attributes": _attributes(n)}
            await producer.send_and_wait(
                topic, json.dumps(body).encode(), key=b"big", headers=headers(f"k-{n}")
            )
        after = {"case_id": "big", "status": "engineer booked"}
        await producer.send_and_wait(
            topic, json.dumps(after).encode(), key=b"big", headers=headers("k-after")
        )
    finally:
        await producer.stop()

    async def booked() -> bool:
        r = await ingest.get("/v1/cases/big")
        return r.status_code == 200 and r.json()["status"] == "engineer booked"

    await eventually(booked, within=60)
    [dead] = await read_topic(infra["kafka"], dlq_topic("ingest").name(namespace), 1)
    found = dict(dead.headers)
    assert found["ce_id"] == f"k-{FULL}".encode()
    assert (found["x-herald-error-kind"], found["x-herald-field"]) == (b"permanent", b"data")
    case = (await ingest.get("/v1/cases/big")).json()
    assert case["version"] == FULL + 1 and f"e{FULL}-0" not in case["attributes"]


async def test_the_sweeper_skips_an_event_it_cannot_apply_and_heals_the_claims_after_it(
    app: FastAPI, ingest: httpx.AsyncClient
) -> None:
    await _fill(ingest, "big")
    repo: CaseRepository = app.state.repo
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    stuck = [
        InboundEvent(
            id="overflow",
            source="/crm",
            type="case.updated",
            time=None,
            data=CaseEventData(case_id="big", attributes=_attributes(FULL)),
        ),
        InboundEvent(
            id="later",
            source="/crm",
            type="case.updated",
            time=None,
            data=CaseEventData(case_id="other", customer_ids=["c1"], status="booked"),
        ),
    ]
    # As if a replica claimed both an hour ago and died before applying them.
    for n, event in enumerate(stuck):
        at = an_hour_ago + timedelta(seconds=n)
        await repo.claim(event.key, case_id=event.data.case_id, now=at, event=event_doc(event))

    sweeper = app.state.sweeper
    assert await asyncio.wait_for(sweeper.sweep(), 60) == (0, 1)
    assert (await ingest.get("/v1/cases/other")).json()["status"] == "booked"
    assert (await ingest.get("/v1/cases/big")).json()["version"] == FULL
    assert await asyncio.wait_for(sweeper.sweep(), 60) == (0, 0)  # and it moved past both


class _Broker:
    """Stands in for the producer: acknowledges every record but those of one case, which it
    refuses for good (a topic whose own limit is below the producer's, say)."""

    source = "ingest"

    def __init__(self, refused_case: str) -> None:
        self.raw = self
        self.refused = refused_case.encode()
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def topic_name(self, topic: Topic) -> str:
        return topic.base

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if key == self.refused:
            done.set_exception(MessageSizeTooLargeError())
        else:
            self.sent.append((topic, json.loads(value)))
            done.set_result(None)
        return done


async def test_a_change_the_broker_refuses_for_good_fails_its_event_not_the_batch(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    repo = CaseRepository(mongo[db_name("ingest")])
    processor = Processor(repo, _Broker("refused"))  # type: ignore[arg-type]

    def event(case_id: str) -> InboundEvent:
        return InboundEvent(
            id=f"{case_id}-1",
            source="/crm",
            type="case.updated",
            time=None,
            data=CaseEventData(case_id=case_id, customer_ids=["c1"], status="open"),
        )

    ok, refused, also_ok = event("ok"), event("refused"), event("also-ok")
    outcomes = await processor.process_batch([ok, refused, also_ok])
    assert outcomes[0] == outcomes[2] == Outcome.ACCEPTED
    assert isinstance(outcomes[1], Unpublishable) and outcomes[1].field == "data"
    # The others are recorded as done; the refused one stays unfinished, for the sweeper.
    again = await processor.process_batch([ok, also_ok])
    assert again == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    with pytest.raises(Unpublishable):
        await processor.process(refused)
