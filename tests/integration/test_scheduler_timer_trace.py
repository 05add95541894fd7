"""A timer fires in the trace that asked for it: the dispatcher's escalation or deferral, and the
voice sender's deferred call-back, are published by the scheduler's poller in the contact's trace,
so one contact can be followed by its trace id across the wait. Rows kept before timers had a
trace still fire, each in a trace of its own."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord
from pymongo import AsyncMongoClient

from herald_contracts import (
    CONTACT_REQUESTED,
    DELIVERY_STATUS,
    ENGAGEMENT_REPLY,
    TIMER_REQUESTED,
    CampaignRef,
    ContactRequest,
    EngagementReply,
    MessageTemplate,
    TimerRequest,
)
from herald_kit import EventProducer, TraceContext, encode
from herald_kit._context import trace_var
from herald_scheduler.adapters.timers import TimerRepository
from herald_scheduler.messaging.timers import TimerService

pytestmark = pytest.mark.asyncio

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
DISPATCHER_SPAN = "00f067aa0ba902b7"


class _Producer:
    """The kit's own EventProducer.publish (the real encoding, headers and all), with the
    broker's send captured."""

    source = "scheduler"
    publish = EventProducer.publish

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, bytes]]] = []

    async def send(self, topic: Any, value: bytes, *, key: Any, headers: Any) -> None:
        found = dict(headers)
        self.sent.append((found["ce_type"].decode(), found))

    def traces(self) -> list[str]:
        out = []
        for _, headers in self.sent:
            trace = TraceContext.parse(headers["traceparent"].decode())
            assert trace is not None
            out.append(trace.trace_id)
        return out


class _Stats:
    async def requested(self, campaign_id: str, request_ids: list[str]) -> None:
        return None


def _request(rid: str, **overrides: Any) -> ContactRequest:
    campaign = CampaignRef(
        id="c", version=1, name="n", topic="t", max_attempts=3,
        messages={"sms": {"en": MessageTemplate(body="hi")}},
    )  # fmt: skip
    fields: dict[str, Any] = {
        "request_id": rid,
        "campaign": campaign,
        "customer_id": "c1",
        "trigger_key": "k",
        "requested_at": datetime.now(UTC),
        "attempt": 2,
        "tried_channels": ["sms"],
        "escalation_of": "m1",
    }
    return ContactRequest(**{**fields, **overrides})


def _record(timer: TimerRequest, trace: TraceContext) -> ConsumerRecord[bytes, bytes]:
    """timers.requests.v1 as the dispatcher (or the voice sender) publishes it, in `trace`."""
    headers, value = encode(TIMER_REQUESTED, timer, source="dispatcher", trace=trace)
    return ConsumerRecord("timers.requests.v1", 0, 0, 0, 0, b"c1", value, None, 0, 0, headers)


async def _handled(service: TimerService, record: ConsumerRecord[bytes, bytes]) -> None:
    """As ConsumerLoop handles a record: inside the record's trace."""
    tp = dict(record.headers).get("traceparent")
    token = trace_var.set(TraceContext.parse(tp.decode()) if tp else None)
    try:
        await service.handle(record)
    finally:
        trace_var.reset(token)


def _service(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> tuple[TimerRepository, _Producer, TimerService]:
    repo = TimerRepository(mongo[db_name("scheduler")])
    producer = _Producer()
    service = TimerService(
        repo, cast(Any, producer), cast(Any, _Stats()), poll_seconds=1, lease_seconds=30
    )
    return repo, producer, service


async def test_an_escalation_fires_in_the_trace_of_the_contact_that_asked_for_it(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    _, producer, service = _service(mongo, db_name)
    due = datetime.now(UTC) - timedelta(seconds=1)
    timer = TimerRequest(
        timer_id="t1", key="esc:r1:1", due_at=due, reason="escalation", request=_request("r1")
    )
    await _handled(service, _record(timer, TraceContext(TRACE, DISPATCHER_SPAN)))
    assert trace_var.get() is None  # the poller's own task handles no trace
    assert await service.fire_due() == 1
    assert [kind for kind, _ in producer.sent] == [CONTACT_REQUESTED.type]
    assert producer.traces() == [TRACE]
    # A span of its own in that trace, not the dispatcher's.
    fired = TraceContext.parse(producer.sent[0][1]["traceparent"].decode())
    assert fired is not None and fired.span_id != DISPATCHER_SPAN


async def test_an_expiry_noted_by_the_poller_is_in_the_contacts_trace(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    # A contact's own deferred request that expired while it waited ends as suppressed.
    _, producer, service = _service(mongo, db_name)
    past = datetime.now(UTC) - timedelta(seconds=1)
    request = _request("r2", escalation_of=None, tried_channels=["email"], expires_at=past)
    timer = TimerRequest(timer_id="t2", key="defer:r2:2", due_at=past, reason="deferral",
                         request=request)  # fmt: skip
    await _handled(service, _record(timer, TraceContext(TRACE, DISPATCHER_SPAN)))
    assert await service.fire_due() == 1
    assert [kind for kind, _ in producer.sent] == [DELIVERY_STATUS.type]
    assert producer.traces() == [TRACE]


async def test_a_deferred_call_back_is_republished_in_the_trace_of_the_reply(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    _, producer, service = _service(mongo, db_name)
    now = datetime.now(UTC)
    reply = EngagementReply(
        reply_id="rep-1", customer_id="c1", channel="sms", intent="callback", at=now,
        callback_number="+15550100", callback_until=now + timedelta(hours=1),
    )  # fmt: skip
    timer = TimerRequest(timer_id="cb-1", key="callback:rep-1", due_at=now - timedelta(seconds=1),
                         reason="call-back outside calling hours", reply=reply)  # fmt: skip
    await _handled(service, _record(timer, TraceContext(TRACE, DISPATCHER_SPAN)))
    assert await service.fire_due() == 1
    assert [kind for kind, _ in producer.sent] == [ENGAGEMENT_REPLY.type]
    assert producer.traces() == [TRACE]


async def test_rows_kept_without_a_trace_still_fire_each_in_a_trace_of_its_own(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    repo, producer, service = _service(mongo, db_name)
    due = datetime.now(UTC) - timedelta(seconds=1)
    for n in (1, 2):
        # As an older scheduler wrote them: no traceparent on the row.
        await repo.schedule(
            timer_id=f"old-{n}",
            key=f"esc:old:{n}",
            due_at=due,
            request=_request(f"old-{n}").model_dump(mode="json"),
            now=due,
        )
    assert await service.fire_due() == 2
    first, second = producer.traces()
    assert first != second


async def test_a_coalescing_window_fires_in_the_trace_of_the_latest_change_that_joined_it(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    repo, producer, service = _service(mongo, db_name)
    now = datetime.now(UTC)
    later = "0af7651916cd43dd8448eb211c80319c"
    request = _request("r3", escalation_of=None, attempt=1, tried_channels=[])
    for version, trace in ((1, TRACE), (2, later)):
        await repo.coalesce(
            key="coalesce:c:case-1:c1",
            case_version=version,
            due_at=now - timedelta(seconds=1),
            request=request.model_dump(mode="json"),
            now=now,
            traceparent=TraceContext(trace, DISPATCHER_SPAN).header(),
        )
    assert await service.fire_due() == 1
    assert producer.traces() == [later]
