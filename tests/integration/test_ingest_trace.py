"""One business event, one trace: ingest publishes an event's cases.changed and cases.state
records in the trace the event came in with (a Kafka record's traceparent header, an HTTP
request's traceparent header), and in one trace of the event's own when it came with none."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from herald_contracts import INBOUND, CaseEventData, Topics
from herald_ingest.app import create_app
from herald_ingest.domain.intake import InboundEvent
from herald_ingest.processing import event_doc
from herald_kit import TraceContext
from support import case_event, cloudevent_headers, ingest_settings, read_topic, running

pytestmark = pytest.mark.asyncio

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "0af7651916cd43dd8448eb211c80319c"


def _tp(trace_id: str) -> str:
    return f"00-{trace_id}-00f067aa0ba902b7-01"


class Published:
    """What ingest published about the test's cases: per case, the trace id of each record."""

    def __init__(self, infra: dict[str, str], namespace: str) -> None:
        self.infra = infra
        self.ns = namespace

    async def traces(self, cases: set[str]) -> dict[str, dict[str, str]]:
        """{case id: {"changed": trace id, "state": trace id}}, once every case has both."""
        out: dict[str, dict[str, str]] = {c: {} for c in cases}
        for name, topic in (("changed", Topics.CASES_CHANGES), ("state", Topics.CASES_STATE)):
            records = await read_topic(
                self.infra["kafka"],
                topic.name(self.ns),
                len(cases),
                keep=lambda r: r.key is not None and r.key.decode() in cases,
            )
            for record in records:
                trace = TraceContext.parse(dict(record.headers)["traceparent"].decode())
                assert trace is not None
                out[record.key.decode()][name] = trace.trace_id
        return out


@pytest.fixture
async def ingest(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(
        ingest_settings(
            infra,
            namespace,
            db_name("ingest"),
            recover_after_seconds=1,
            sweep_interval_seconds=3600,  # the test drives sweeps itself
        )
    )
    async with running(app) as client:
        yield client, app


async def test_events_from_kafka_keep_each_records_trace(
    ingest: tuple[httpx.AsyncClient, Any], infra: dict[str, str], namespace: str
) -> None:
    # One poll's batch holds events of several traces, and one that came with none.
    producer = AIOKafkaProducer(bootstrap_servers=infra["kafka"])
    await producer.start()
    cases = {name: f"{name}-{uuid.uuid4().hex[:6]}" for name in ("a", "b", "none")}
    try:
        for name, case in cases.items():
            headers = cloudevent_headers(f"k-{case}")
            if name != "none":
                headers.append(("traceparent", _tp(TRACE if name == "a" else OTHER).encode()))
            await producer.send(
                INBOUND["case.updated"].topic.name(namespace),
                json.dumps({"case_id": case, "customer_ids": ["c1"]}).encode(),
                key=case.encode(),
                headers=headers,
            )
        await producer.flush()
    finally:
        await producer.stop()
    seen = await Published(infra, namespace).traces(set(cases.values()))
    assert seen[cases["a"]] == {"changed": TRACE, "state": TRACE}
    assert seen[cases["b"]] == {"changed": OTHER, "state": OTHER}
    # No trace came in: both records of the event still share one, of the event's own.
    untraced = seen[cases["none"]]
    assert untraced["changed"] == untraced["state"]
    assert untraced["changed"] not in (TRACE, OTHER)


async def test_an_event_posted_with_a_traceparent_is_published_in_the_callers_trace(
    ingest: tuple[httpx.AsyncClient, Any], infra: dict[str, str], namespace: str
) -> None:
    client, _ = ingest
    case = f"h-{uuid.uuid4().hex[:6]}"
    r = await client.post(
        "/v1/events", json=case_event(case, f"h-{case}"), headers={"traceparent": _tp(TRACE)}
    )
    assert r.status_code == 202, r.text
    seen = await Published(infra, namespace).traces({case})
    assert seen[case] == {"changed": TRACE, "state": TRACE}


async def test_concurrent_posts_applied_in_one_batch_keep_each_callers_trace(
    ingest: tuple[httpx.AsyncClient, Any], infra: dict[str, str], namespace: str
) -> None:
    # Concurrent posts share one batch, applied outside every caller's request.
    client, _ = ingest
    traces = {f"c{n}-{uuid.uuid4().hex[:6]}": uuid.uuid4().hex for n in range(8)}

    async def post(case: str, trace_id: str) -> None:
        r = await client.post(
            "/v1/events", json=case_event(case, f"e-{case}"), headers={"traceparent": _tp(trace_id)}
        )
        assert r.status_code == 202, r.text

    await asyncio.gather(*(post(case, trace_id) for case, trace_id in traces.items()))
    seen = await Published(infra, namespace).traces(set(traces))
    assert seen == {case: {"changed": t, "state": t} for case, t in traces.items()}


async def test_a_batch_posted_without_a_traceparent_is_published_in_one_trace_per_request(
    ingest: tuple[httpx.AsyncClient, Any], infra: dict[str, str], namespace: str
) -> None:
    client, _ = ingest
    first = [f"p1-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    second = [f"p2-{uuid.uuid4().hex[:6]}"]
    for cases in (first, second):
        r = await client.post("/v1/events", json=[case_event(c, f"e-{c}") for c in cases])
        assert r.status_code == 202 and r.json()["accepted"] == len(cases), r.text
    seen = await Published(infra, namespace).traces({*first, *second})
    traces = {case: {t["changed"], t["state"]} for case, t in seen.items()}
    assert traces[first[0]] == traces[first[1]]  # one request, one trace
    assert len(traces[first[0]]) == 1  # an event's two records in it
    assert traces[second[0]] != traces[first[0]]  # another request, another trace


async def test_an_event_the_sweeper_finishes_is_published_in_the_trace_it_came_in(
    ingest: tuple[httpx.AsyncClient, Any], infra: dict[str, str], namespace: str
) -> None:
    _, app = ingest
    case = f"sw-{uuid.uuid4().hex[:6]}"
    stuck = InboundEvent(
        id=f"stuck-{case}",
        source="/crm",
        type="case.updated",
        time=datetime.now(UTC),
        data=CaseEventData(case_id=case, customer_ids=["c1"], status="engineer booked"),
        traceparent=_tp(TRACE),
    )
    # As if a replica claimed the event (which keeps it, with its trace) and died before
    # applying it.
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    await app.state.repo.claim(stuck.key, case_id=case, now=an_hour_ago, event=event_doc(stuck))
    assert await app.state.sweeper.sweep() == (0, 1)
    seen = await Published(infra, namespace).traces({case})
    assert seen[case] == {"changed": TRACE, "state": TRACE}
