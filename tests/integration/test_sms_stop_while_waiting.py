"""A STOP that arrives while an SMS waits to go out stops that very SMS.

Real database and broker. A message waits between its claim and the provider call: in a retry
pause after Twilio's 503, in a 429's hold, in the pacer's queue, or on an open circuit breaker.
The customer texts STOP meanwhile (through the inbound webhook's handler, as Twilio delivers
it). The opt-out is read again right before the provider call, so nothing goes out: the
message fails as opted out (21610), as one refused at its claim does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from twilio_support import outbound_sms

from herald_kit import CircuitBreaker, EventProducer, Pacer
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.adapters.provider import ProviderBusy, Sent
from herald_sms_sender.replies import Replies
from herald_sms_sender.sending import OPTED_OUT, RetryPolicy, SmsSending
from support import eventually, unique_phone

IDENTITY = "+15005550006"
Texted = Callable[[], Awaitable[None]]


class Provider:
    """Takes every SMS, except that the first request gets `first` (a 'busy' answer), just
    after `before_first` ran (the customer's STOP arriving meanwhile)."""

    def __init__(self, first: ProviderBusy | None = None) -> None:
        self.first = first
        self.before_first: Texted | None = None
        self.requests = 0
        self.taken = 0

    async def send(self, *, to: str, body: str, status_callback: str | None) -> Sent:
        self.requests += 1
        if self.requests == 1 and self.first is not None:
            assert self.before_first is not None
            await self.before_first()
            raise self.first
        self.taken += 1
        return Sent(provider_id=f"SM{self.taken:032d}", status="queued")

    async def find_sent(self, *, to: str, body: str, since: datetime) -> list[str]:
        return []

    async def close(self) -> None:
        pass


class StopInThePacer(Pacer):
    """A paced sender (so the claim leaves the row 'queued'); the customer texts STOP while
    the message waits for its turn."""

    def __init__(self) -> None:
        super().__init__(1000.0)
        self.meanwhile: Texted | None = None

    async def acquire(self, identity: str) -> bool:
        if self.meanwhile is not None:
            await self.meanwhile()
            self.meanwhile = None
        await super().acquire(identity)
        return True  # the message waited for its turn (the STOP came meanwhile)


@pytest.mark.parametrize("wait", ["retry-pause", "429-hold", "pacer", "breaker-open"])
async def test_a_stop_that_arrives_while_the_sms_waits_stops_it(
    wait: str, mongo: Any, db_name: Callable[[str], str], prod: EventProducer
) -> None:
    db = mongo[db_name("sms_sender")]
    ledger = Ledger(db)
    await ledger.ensure_indexes()
    phone = unique_phone()
    replies = Replies(ledger, prod, keywords={"1": "confirm"}, help_answer="help")

    async def stop() -> None:
        await replies.handle(sid="SMstop", from_=phone, body="STOP")

    provider = Provider()
    pacer: Pacer = Pacer(0)
    breaker = CircuitBreaker()
    if wait == "retry-pause":
        provider.first = ProviderBusy("busy", status=503, code="20503", retry_after=None)
        provider.before_first = stop
    elif wait == "429-hold":
        provider.first = ProviderBusy("slow down", status=429, code="20429", retry_after=0.2)
        provider.before_first = stop
    elif wait == "pacer":
        pacer = StopInThePacer()
        pacer.meanwhile = stop
    else:
        breaker = CircuitBreaker(threshold=1, cooldown=1.0)
        breaker.failure()  # open: the message waits out the cool-down
    sending = SmsSending(
        ledger,
        provider,
        prod,
        callback_url="http://127.0.0.1:1/s",
        identity=IDENTITY,
        pacer=pacer,
        breaker=breaker,
        retry=RetryPolicy(attempts=3, base_seconds=0.01, cap_seconds=0.01),
    )
    msg = outbound_sms(phone)
    task = asyncio.create_task(sending.send(msg))
    if wait == "breaker-open":

        async def waiting() -> bool:
            row = await db["send_ledger"].find_one({"_id": msg.message_id})
            return row is not None and row["status"] == "retry"

        await eventually(waiting, within=5, interval=0.02)
        await stop()
    await asyncio.wait_for(task, timeout=10)

    assert provider.taken == 0, "the SMS went out after the customer texted STOP"
    row = await db["send_ledger"].find_one({"_id": msg.message_id})
    assert (row["status"], row["error_code"]) == ("failed", OPTED_OUT)
