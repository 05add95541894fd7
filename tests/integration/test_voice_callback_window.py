"""A call-back outside calling hours waits for them, durably (a scheduler timer), and is never
placed outside them or after the campaign's window.

Real broker and database, the real scheduler (timer poller) and the sandbox over real HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from test_scheduler_support import scheduler
from twilio_support import (
    SANDBOX_SID,
    SANDBOX_TOKEN,
    Collector,
    producer,
    sandbox_serving,
    serving,
)

from herald_contracts import (
    DELIVERY_STATUS,
    ENGAGEMENT_REPLY,
    TIMER_REQUESTED,
    EngagementReply,
    utc_now,
)
from herald_kit import EventProducer
from herald_voice_sender.app import create_app as voice_app
from herald_voice_sender.calling import callback_timer_id
from herald_voice_sender.config import Settings as VoiceSettings
from support import eventually, free_port, unique_phone

NEW_YORK = ZoneInfo("America/New_York")  # where unique_phone()'s +1 201 numbers are


def _opening_soon() -> datetime:
    """The next whole minute at least 40 s away (startup included): calling hours will open then."""
    now = utc_now()
    opening = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return opening if opening - now >= timedelta(seconds=40) else opening + timedelta(minutes=1)


@dataclass
class Env:
    sandbox: str
    http: httpx.AsyncClient
    producer: EventProducer
    statuses: Collector
    timers: Collector

    async def calls_to(self, phone: str) -> list[dict[str, Any]]:
        r = await self.http.get(f"{self.sandbox}/sandbox/api/calls", params={"to": phone})
        items: list[dict[str, Any]] = r.json()["items"]
        return items


@pytest.fixture
def opening() -> datetime:
    return _opening_soon()


@pytest.fixture
async def env(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str], opening: datetime
) -> AsyncIterator[Env]:
    """Sandbox, a voice-sender whose calling hours open at `opening`, and a scheduler."""
    local = opening.astimezone(NEW_YORK)
    start = f"{local:%H:%M}"
    end = f"{(local + timedelta(hours=2)):%H:%M}"
    async with AsyncExitStack() as stack:
        port = free_port()
        sandbox = await stack.enter_async_context(sandbox_serving())
        settings = VoiceSettings(
            port=port,
            public_base_url=f"http://127.0.0.1:{port}",
            kafka_bootstrap=infra["kafka"],
            mongo_uri=infra["mongo"],
            mongo_db=db_name("voice_sender"),
            topic_namespace=namespace,
            twilio_account_sid=SANDBOX_SID,
            twilio_auth_token=SANDBOX_TOKEN,
            twilio_base_url=sandbox,
            rate_per_second=0,
            calling_hours_start=start,
            calling_hours_end=end,
        )
        await stack.enter_async_context(serving(voice_app(settings), port))
        await stack.enter_async_context(scheduler(infra, namespace, db_name("scheduler")))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        prod = await stack.enter_async_context(producer(infra["kafka"], namespace))
        statuses = await stack.enter_async_context(
            Collector(infra["kafka"], namespace, DELIVERY_STATUS)
        )
        timers = await stack.enter_async_context(
            Collector(infra["kafka"], namespace, TIMER_REQUESTED)
        )

        async def ready() -> bool:
            return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200

        await eventually(ready, within=30)
        yield Env(sandbox, http, prod, statuses, timers)


def _reply(phone: str, *, until: datetime, campaign_id: str | None = "camp-cb") -> EngagementReply:
    return EngagementReply(
        reply_id=f"sms-SM{unique_phone()[-8:]}",
        customer_id="cust-cb",
        channel="sms",
        intent="callback",
        text="3",
        message_id="msg-1",
        campaign_id=campaign_id,
        case_id="case-1",
        at=utc_now(),
        callback_number=phone,
        callback_until=until,
    )


@pytest.mark.timeout(240)
async def test_a_callback_outside_calling_hours_is_placed_when_they_open(
    env: Env, opening: datetime
) -> None:
    phone = unique_phone()
    reply = _reply(phone, until=opening + timedelta(hours=1))
    await env.producer.publish(ENGAGEMENT_REPLY, reply, key=reply.customer_id)
    await env.producer.publish(ENGAGEMENT_REPLY, reply, key=reply.customer_id)  # a redelivery

    timers = await eventually(
        lambda: [t for t in env.timers.items if t.reply and t.reply.reply_id == reply.reply_id]
    )
    # One timer per reply and slot: the redelivery asks for the same one.
    assert timers[0].due_at == opening and timers[0].timer_id == callback_timer_id(
        reply.reply_id, opening
    )
    assert utc_now() < opening and await env.calls_to(phone) == []  # not called at once

    calls = await eventually(lambda: env.calls_to(phone), within=120, interval=0.5)
    placed_at = datetime.fromisoformat(calls[0]["date_created"])
    assert placed_at.astimezone(UTC) >= opening  # never before the hours open
    sent = await eventually(
        lambda: env.statuses.where(message_id=f"callback-{reply.reply_id}", status="sent")
    )
    assert sent[0].provider_id == calls[0]["sid"]
    # Reported for the campaign whose message was answered (the reply waited in a timer).
    assert (sent[0].campaign_id, sent[0].request_id) == ("camp-cb", "msg-1")
    assert len(await env.calls_to(phone)) == 1  # the redelivered reply placed no second call


async def test_no_call_when_the_campaign_window_ends_before_calling_hours(
    env: Env, opening: datetime
) -> None:
    phone = unique_phone()
    reply = _reply(phone, until=opening - timedelta(seconds=5))
    await env.producer.publish(ENGAGEMENT_REPLY, reply, key=reply.customer_id)
    failed = await eventually(
        lambda: env.statuses.where(message_id=f"callback-{reply.reply_id}", status="failed")
    )
    assert failed[0].error_code == "outside-window"
    assert (failed[0].campaign_id, failed[0].request_id) == ("camp-cb", "msg-1")
    assert await env.calls_to(phone) == []
    assert not [t for t in env.timers.items if t.reply and t.reply.reply_id == reply.reply_id]
    # A reply that names no campaign (one published before replies did) still gets its answer.
    anonymous = _reply(phone, until=opening - timedelta(seconds=5), campaign_id=None)
    await env.producer.publish(ENGAGEMENT_REPLY, anonymous, key=anonymous.customer_id)
    failed = await eventually(
        lambda: env.statuses.where(message_id=f"callback-{anonymous.reply_id}", status="failed")
    )
    assert failed[0].campaign_id == "callback"
