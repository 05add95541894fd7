"""What the SMS and voice senders do with the provider's answers that are not a plain yes or no.

Real database and broker. An answer that leaves the outcome unknown (a timeout, a 5xx that
may have been taken) is looked up and, not found, reported `unknown`: never sent a second
time. A 429's Retry-After, over real HTTP, holds the next request back that long. And waits on
the circuit breaker send nothing, so they take none of a message's attempts: a slow half-open
trial does not fail the messages waiting for its verdict.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web
from twilio_support import outbound_sms, outbound_voice

from herald_kit import CircuitBreaker, EventProducer, Pacer
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.adapters.provider import (
    ProviderBusy,
    ProviderTimeout,
    Sent,
    TwilioSms,
)
from herald_sms_sender.sending import RetryPolicy, SmsSending
from herald_voice_sender.adapters.ledger import CallLedger
from herald_voice_sender.adapters.provider import Placed
from herald_voice_sender.calling import RetryPolicy as CallRetryPolicy
from herald_voice_sender.calling import VoiceCalling
from support import unique_phone

IDENTITY = "+15005550006"


class TakesThenLosesTheAnswer:
    """Takes every SMS; the answer to the first is lost (`lost`), and the Messages list cannot
    answer (`lookup`: "fails", or "empty": Twilio's list does not show it yet)."""

    def __init__(self, lost: ProviderTimeout, lookup: str) -> None:
        self.lost = lost
        self.lookup = lookup
        self.taken: list[str] = []

    async def send(self, *, to: str, body: str, status_callback: str | None) -> Sent:
        self.taken.append(body)
        if len(self.taken) == 1:
            raise self.lost
        return Sent(provider_id=f"SM{len(self.taken):032d}", status="queued")

    async def find_sent(self, *, to: str, body: str, since: datetime) -> list[str]:
        if self.lookup == "fails":
            raise ProviderTimeout("twilio did not answer in time", code="timeout")
        return []

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("lookup", ["fails", "empty"])
@pytest.mark.parametrize(
    "lost",
    [
        ProviderTimeout("twilio did not answer in time", code="timeout"),
        ProviderTimeout("twilio 502 (502): outcome unknown", code="502"),
    ],
    ids=["timeout", "gateway-502"],
)
async def test_an_sms_whose_answer_was_lost_and_not_found_is_unknown_never_sent_twice(
    lost: ProviderTimeout,
    lookup: str,
    mongo: Any,
    db_name: Callable[[str], str],
    prod: EventProducer,
) -> None:
    db = mongo[db_name("sms_sender")]
    twilio = TakesThenLosesTheAnswer(lost, lookup)
    sending = SmsSending(
        Ledger(db),
        twilio,
        prod,
        callback_url="http://127.0.0.1:1/s",
        identity=IDENTITY,
        retry=RetryPolicy(attempts=6, base_seconds=0.01, cap_seconds=0.01),
    )
    msg = outbound_sms(unique_phone())
    await sending.send(msg)
    assert twilio.taken == [msg.body], "the customer got the SMS twice"
    row = await db["send_ledger"].find_one({"_id": msg.message_id})
    assert (row["status"], row["error_code"]) == ("unknown", lost.code)

    await sending.send(msg)  # redelivered: the outcome stands, nothing goes out
    assert twilio.taken == [msg.body]
    row = await db["send_ledger"].find_one({"_id": msg.message_id})
    assert row["status"] == "unknown"


@asynccontextmanager
async def twilio_answering_429_once(retry_after: int) -> AsyncIterator[tuple[str, list[float]]]:
    """A local HTTP server standing in for Twilio: the first Message gets 429 with
    `Retry-After`, the next ones are taken. Its URL, and when each request came."""
    times: list[float] = []

    async def create(request: web.Request) -> web.Response:
        times.append(time.monotonic())
        if len(times) == 1:
            body = {"code": 20429, "message": "Too Many Requests", "status": 429}
            return web.Response(
                status=429,
                headers={"Retry-After": str(retry_after)},
                content_type="application/json",
                text=json.dumps(body),
            )
        sid = f"SM{len(times):032d}"
        return web.json_response({"sid": sid, "status": "queued"}, status=201)

    app = web.Application()
    app.router.add_post("/{tail:.*}", create)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", times
    finally:
        await runner.cleanup()


async def test_after_a_429_the_next_request_waits_for_its_retry_after(
    mongo: Any, db_name: Callable[[str], str], prod: EventProducer
) -> None:
    db = mongo[db_name("sms_sender")]
    async with twilio_answering_429_once(retry_after=2) as (url, times):
        twilio = TwilioSms(
            account_sid="AC" + "0" * 32,
            auth_token="token",
            from_number=IDENTITY,
            messaging_service_sid=None,
            base_url=url,
        )
        pacer = Pacer(0)
        sending = SmsSending(
            Ledger(db),
            twilio,
            prod,
            callback_url="http://127.0.0.1:1/s",
            identity=twilio.identity,
            pacer=pacer,
            retry=RetryPolicy(base_seconds=0.05, cap_seconds=0.1),
        )
        msg = outbound_sms(unique_phone())
        try:
            await sending.send(msg)
        finally:
            await twilio.close()
    assert len(times) == 2
    assert times[1] - times[0] >= 2.0, "the next request came before Twilio's Retry-After"
    row = await db["send_ledger"].find_one({"_id": msg.message_id})
    assert row["status"] == "sent"


class RecoveringSlowly:
    """Answers the first request 503 (the breaker opens), then takes each, slowly: three
    seconds a request, inside Twilio's 10 s timeout, so the half-open trial is long in flight
    (a waiting message polls the breaker every tenth of a second meanwhile)."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    async def _request(self, to: str) -> str:
        self.requests.append(to)
        if len(self.requests) == 1:
            raise ProviderBusy("twilio 503 (20503)", status=503, code="20503", retry_after=None)
        await asyncio.sleep(3.0)
        return f"{len(self.requests):032d}"

    async def send(self, *, to: str, body: str, status_callback: str | None) -> Sent:
        return Sent(provider_id="SM" + await self._request(to), status="queued")

    async def find_sent(self, *, to: str, body: str, since: datetime) -> list[str]:
        return []

    async def call(
        self, *, to: str, url: str, status_callback: str, machine_detection: bool
    ) -> Placed:
        return Placed(provider_id="CA" + await self._request(to), status="queued")

    async def find_placed(self, *, to: str, since: datetime) -> list[str]:
        return []

    async def close(self) -> None:
        pass


def opens_at_once() -> CircuitBreaker:
    """Opened by one failure, for a tenth of a second."""
    return CircuitBreaker(threshold=1, cooldown=0.1)


@pytest.mark.parametrize("channel", ["sms", "voice"])
async def test_messages_waiting_on_a_slow_trial_keep_their_attempts_and_go_out(
    channel: str, mongo: Any, db_name: Callable[[str], str], prod: EventProducer
) -> None:
    twilio = RecoveringSlowly()
    send: Callable[[Any], Awaitable[object]]
    messages: list[Any]
    if channel == "sms":
        db = mongo[db_name("sms_sender")]
        sending = SmsSending(
            Ledger(db),
            twilio,
            prod,
            callback_url="http://127.0.0.1:1/s",
            identity=IDENTITY,
            breaker=opens_at_once(),
            retry=RetryPolicy(attempts=6, base_seconds=0.15, cap_seconds=0.15),
        )
        send, ledger = sending.send, "send_ledger"
        messages = [outbound_sms(unique_phone()) for _ in range(6)]
    else:
        db = mongo[db_name("voice_sender")]
        calling = VoiceCalling(
            CallLedger(db),
            twilio,
            prod,
            base_url="http://127.0.0.1:1",
            identity=IDENTITY,
            breaker=opens_at_once(),
            retry=CallRetryPolicy(attempts=5, base_seconds=0.15, cap_seconds=0.15),
        )
        send, ledger = calling.place, "call_ledger"
        messages = [
            VoiceCalling.from_outbound(outbound_voice(unique_phone(), "Your engineer is booked."))
            for _ in range(6)
        ]
    first, *others = messages
    opening = asyncio.create_task(send(first))  # its 503 opens the breaker
    await asyncio.sleep(0.01)
    await asyncio.gather(opening, *(send(m) for m in others))
    rows = await db[ledger].find({"_id": {"$in": [m.message_id for m in others]}}).to_list(None)
    assert {r["status"] for r in rows} == {"sent"}, [r.get("reason") for r in rows]
    assert sorted(twilio.requests[1:]) == sorted(m.to for m in [first, *others])
