"""Ingest on the real broker and database: convergence from Kafka, timeline consumer, sweepers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.errors import AutoReconnect

from herald_contracts import (
    DELIVERY_STATUS,
    ENGAGEMENT_REPLY,
    INBOUND,
    CaseEventData,
    DeliveryStatus,
    EngagementReply,
)
from herald_ingest.app import create_app
from herald_ingest.domain.intake import InboundEvent
from herald_ingest.domain.projection import Projection, apply, order_key
from herald_ingest.processing import event_doc
from herald_ingest.sweeper import Sweeper
from herald_kit import encode
from support import case_event, eventually, ingest_settings, running

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


class Harness:
    """A running ingest app and a raw producer onto its namespace."""

    def __init__(self, client: httpx.AsyncClient, producer: AIOKafkaProducer, ns: str) -> None:
        self.client = client
        self.producer = producer
        self.ns = ns
        self.app: Any = None

    async def send(self, et: Any, body: Any, *, key: str, event_id: str, time: datetime) -> None:
        headers, value = encode(et, body, source="/crm", event_id=event_id, time=time)
        await self.producer.send_and_wait(
            et.topic.name(self.ns), value, key=key.encode(), headers=headers
        )


@pytest.fixture
async def harness(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> AsyncIterator[Harness]:
    app = create_app(
        ingest_settings(
            infra,
            namespace,
            db_name("ingest"),
            recover_after_seconds=1,
            sweep_interval_seconds=3600,  # the test drives sweeps itself
        )
    )
    producer = AIOKafkaProducer(bootstrap_servers=infra["kafka"], linger_ms=2)
    await producer.start()
    try:
        async with running(app) as client:
            h = Harness(client, producer, namespace)
            h.app = app
            yield h
    finally:
        await producer.stop()


@st.composite
def case_histories(draw: st.DrawFn) -> tuple[list[tuple[int, CaseEventData]], list[int]]:
    """A case's events (in the order the source made them) and an arrival order."""
    n = draw(st.integers(min_value=2, max_value=7))
    use_sequence = draw(st.booleans())
    events = []
    for i in range(n):
        events.append(
            (
                i,
                CaseEventData(
                    case_id="placeholder",
                    customer_ids=draw(
                        st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True)
                    ),
                    sequence=i if use_sequence else None,
                    status=draw(st.sampled_from(["open", "delayed", "booked", None])),
                    summary=draw(st.sampled_from(["s1", "s2", None])),
                    attributes=draw(
                        st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 3))
                    ),
                ),
            )
        )
    return events, draw(st.permutations(range(n)))


def _comparable(state: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in state.items() if k not in ("version", "updated_at")}
    out["customer_ids"] = sorted(out.get("customer_ids") or [])
    return out


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(history=case_histories())
async def test_shuffled_arrival_on_the_topic_converges(
    harness: Harness, history: tuple[list[tuple[int, CaseEventData]], list[int]]
) -> None:
    """Whatever order the broker delivers a case's events in, the case ends the same."""
    events, arrival = history
    case_id = f"prop-{uuid.uuid4().hex[:10]}"
    made = [(i, d.model_copy(update={"case_id": case_id})) for i, d in events]
    ids = {i: f"{case_id}-e{i}" for i, _ in made}
    # What the source meant: its events applied in the order it made them.
    expected = Projection(None, {})
    for i, data in made:
        key = order_key(
            data,
            source="/crm",
            time=T0 + timedelta(seconds=i),
            received=T0,
            event_key=f"/crm|{ids[i]}",
        )
        expected = apply(expected, data, key=key, now=T0) or expected
    for i in arrival:
        _, data = made[i]
        await harness.send(
            INBOUND["case.updated"],
            data,
            key=case_id,
            event_id=ids[i],
            time=T0 + timedelta(seconds=i),
        )

    async def all_recorded() -> list[Any] | None:
        r = await harness.client.get(f"/v1/cases/{case_id}/timeline")
        items = r.json()["items"] if r.status_code == 200 else []
        return items if len(items) == len(made) else None

    await eventually(all_recorded, within=30)
    done = harness.app.state.repo.done
    keys = [f"/crm|{event_id}" for event_id in ids.values()]

    async def all_finished() -> bool:
        return bool(await done.count_documents({"_id": {"$in": keys}}) == len(made))

    await eventually(all_finished, within=30)
    actual = (await harness.client.get(f"/v1/cases/{case_id}")).json()
    assert expected.state is not None
    assert _comparable(actual) == _comparable(expected.state.model_dump(mode="json"))


async def test_contacts_and_replies_join_the_case_timeline(harness: Harness) -> None:
    case_id = f"tl-{uuid.uuid4().hex[:8]}"
    r = await harness.client.post(
        "/v1/events", json=case_event(case_id, f"{case_id}-1", type_="case.opened")
    )
    assert r.status_code == 202
    status = DeliveryStatus(
        message_id="m-1",
        request_id="r-1",
        campaign_id="camp",
        customer_id="c1",
        case_id=case_id,
        channel="sms",
        status="delivered",
        at=T0,
    )
    reply = EngagementReply(
        reply_id="rep-1", customer_id="c1", channel="sms", intent="confirm", case_id=case_id, at=T0
    )
    # A contact the dispatcher failed before any message went out is no contact either: off
    # the timeline. Sent first: the statuses after it on its partition show it was judged.
    unsent = status.model_copy(
        update={"message_id": "f-1", "channel": "sms", "status": "failed", "reason": "render"}
    )
    await harness.send(DELIVERY_STATUS, unsent, key="c1", event_id="f-1", time=T0)
    await harness.send(DELIVERY_STATUS, status, key="c1", event_id="d-1", time=T0)
    await harness.send(DELIVERY_STATUS, status, key="c1", event_id="d-1b", time=T0)  # redelivery
    # A suppression is no contact: it stays off the timeline (the customer's status page).
    suppressed = status.model_copy(
        update={"message_id": "s-1", "channel": None, "status": "suppressed", "reason": "expired"}
    )
    await harness.send(DELIVERY_STATUS, suppressed, key="c1", event_id="s-1", time=T0)
    await harness.send(ENGAGEMENT_REPLY, reply, key="c1", event_id="rep-1", time=T0)

    async def kinds() -> list[str] | None:
        items = (await harness.client.get(f"/v1/cases/{case_id}/timeline")).json()["items"]
        got = sorted(i["kind"] for i in items)
        return got if len(got) >= 3 else None

    assert await eventually(kinds, within=20) == ["contact", "event", "reply"]
    items = (await harness.client.get(f"/v1/cases/{case_id}/timeline")).json()["items"]
    (contact,) = [i for i in items if i["kind"] == "contact"]
    assert (contact["channel"], contact["status"]) == ("sms", "delivered")


async def test_sweeper_heals_a_half_done_event_and_forgets_old_ones(harness: Harness) -> None:
    repo = harness.app.state.repo
    sweeper = harness.app.state.sweeper
    case_id = f"sw-{uuid.uuid4().hex[:8]}"
    stuck = InboundEvent(
        id="stuck-1",
        source="/crm",
        type="case.updated",
        time=T0,
        data=CaseEventData(case_id=case_id, customer_ids=["c1"], status="engineer booked"),
    )
    # As if a replica claimed the event an hour ago and died before applying it.
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    await repo.claim(stuck.key, case_id=case_id, now=an_hour_ago, event=event_doc(stuck))
    assert (await harness.client.get(f"/v1/cases/{case_id}")).status_code == 404

    assert await sweeper.sweep() == (0, 1)
    case = (await harness.client.get(f"/v1/cases/{case_id}")).json()
    assert case["status"] == "engineer booked" and case["version"] == 1
    assert await sweeper.sweep() == (0, 0)  # healed once, not again
    r = await harness.client.post(
        "/v1/events",
        json={
            "specversion": "1.0",
            "id": "stuck-1",
            "source": "/crm",
            "type": "case.updated",
            "data": {"case_id": case_id, "status": "engineer booked"},
        },
    )
    assert r.json()["duplicate"] == 1  # within the retention window: still a duplicate

    # Past a (short) retention window the dedupe row is forgotten.
    short = Sweeper(
        repo,
        harness.app.state.processor,
        retention_seconds=1800,
        recover_after_seconds=1,
        interval_seconds=3600,
    )
    forgotten, _ = await short.sweep()
    assert forgotten == 1
    assert await repo.seen.count_documents({"_id": stuck.key}) == 0


async def test_a_sweep_pages_through_a_batch_of_claims_larger_than_a_page(
    harness: Harness,
) -> None:
    # Every claim of one batch has the same time: pages by time alone started again at the
    # batch's first claim for ever once a batch held more claims than a page (500).
    repo = harness.app.state.repo
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    events = [
        InboundEvent(
            id=f"big-{i:04}",
            source="/crm",
            type="case.updated",
            time=T0,
            data=CaseEventData(case_id=f"big-{i:04}", customer_ids=["c1"], status="open"),
        )
        for i in range(1200)
    ]
    await repo.claim_many(
        [
            {
                "_id": e.key,
                "case_id": e.data.case_id,
                "status": "received",
                "received_at": an_hour_ago,
                "event": event_doc(e),
            }
            for e in events
        ]
    )
    # All finished but a few, on either side of where the pages end.
    stuck = {0, 499, 500, 999, 1000, 1199}
    await repo.mark_many([(e.key, "applied", 1) for i, e in enumerate(events) if i not in stuck])

    sweeper = harness.app.state.sweeper
    assert await asyncio.wait_for(sweeper.sweep(), 60) == (0, len(stuck))
    for i in stuck:
        case = (await harness.client.get(f"/v1/cases/big-{i:04}")).json()
        assert case["status"] == "open"
    assert await asyncio.wait_for(sweeper.sweep(), 60) == (0, 0)


async def test_a_sweep_cut_short_by_an_outage_starts_again_at_the_row_it_failed_on(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A row's own failure is skipped; an outage is no row's fault, and skipping every row it
    # meets would leave them unhealed for good.
    repo = harness.app.state.repo
    processor = harness.app.state.processor
    case_id = f"sw-{uuid.uuid4().hex[:8]}"
    stuck = InboundEvent(
        id="stuck-1",
        source="/crm",
        type="case.updated",
        time=T0,
        data=CaseEventData(case_id=case_id, customer_ids=["c1"], status="engineer booked"),
    )
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    await repo.claim(stuck.key, case_id=case_id, now=an_hour_ago, event=event_doc(stuck))
    real = processor.process

    async def down(event: InboundEvent, **kw: Any) -> Any:
        raise AutoReconnect("the database went away")

    monkeypatch.setattr(processor, "process", down)
    sweeper = harness.app.state.sweeper
    with pytest.raises(AutoReconnect):
        await sweeper.sweep()
    monkeypatch.setattr(processor, "process", real)
    assert await sweeper.sweep() == (0, 1)
    assert (await harness.client.get(f"/v1/cases/{case_id}")).json()["version"] == 1
