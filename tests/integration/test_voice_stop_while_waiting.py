"""A stop chosen on a call stops the calls to that number still waiting to be placed.

Real database and broker. The customer chooses stop on the IVR of one call (the keypad's 9,
through the signed gather webhook, as Twilio delivers it). A second call to the number, which
the dispatcher handed over before it could know, is waiting between its claim and the provider
call: in a retry pause after Twilio's 503, in a 429's hold, in the pacer's queue, or on an open
circuit breaker. The opt-out is read again right before the provider call, so it is not placed:
it fails as opted out, as one refused at its claim does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from twilio.request_validator import RequestValidator
from twilio_support import Collector, outbound_voice

from herald_contracts import ENGAGEMENT_REPLY, EngagementReply, utc_now
from herald_kit import CircuitBreaker, EventProducer, Pacer
from herald_voice_sender.adapters.ledger import CallLedger, number_key
from herald_voice_sender.adapters.provider import Placed, ProviderBusy
from herald_voice_sender.api import webhooks
from herald_voice_sender.calling import OPTED_OUT, RetryPolicy, VoiceCalling
from herald_voice_sender.config import Settings
from herald_voice_sender.domain.window import CallingHours
from support import MeanwhileInThePacer, eventually, unique_phone

CALLER_ID = "+15005550006"
BASE = "http://voice.test"
TOKEN = "voice-test-token"
Chosen = Callable[[], Awaitable[None]]


class Provider:
    """Takes every call, except that the request `busy_at` gets `busy` (a 'busy' answer), just
    after `before_busy` ran (the customer's stop arriving meanwhile)."""

    def __init__(self) -> None:
        self.busy: ProviderBusy | None = None
        self.busy_at = 0
        self.before_busy: Chosen | None = None
        self.requests = 0
        self.placed: list[str] = []

    async def call(
        self, *, to: str, url: str, status_callback: str, machine_detection: bool
    ) -> Placed:
        self.requests += 1
        if self.requests == self.busy_at and self.busy is not None:
            assert self.before_busy is not None
            await self.before_busy()
            raise self.busy
        self.placed.append(url)
        return Placed(provider_id=f"CA{len(self.placed):032d}", status="queued")

    async def find_placed(self, *, to: str, since: datetime) -> list[str]:
        return []

    async def close(self) -> None:
        pass


@pytest.fixture
async def db(mongo: Any, db_name: Callable[[str], str]) -> Any:
    """The voice sender's database, with the call ledger's indexes."""
    db = mongo[db_name("voice_sender")]
    await CallLedger(db).ensure_indexes()
    return db


async def outcome(db: Any, message_id: str) -> tuple[str, str | None]:
    """A call's status in the ledger, and why it failed."""
    row = await db["call_ledger"].find_one({"_id": message_id})
    assert row is not None
    return row["status"], row.get("error_code")


def stop_on(calling: VoiceCalling) -> Callable[[str], Awaitable[None]]:
    """Choose stop (the keypad's 9) on the call with this message id, through the signed
    gather webhook."""
    app = FastAPI()
    app.include_router(webhooks.router)
    app.state.settings = Settings(public_base_url=BASE, twilio_auth_token=TOKEN)
    app.state.calling = calling

    async def choose(mid: str) -> None:
        url = f"{BASE}/webhooks/twilio/voice/gather?mid={mid}"
        params = {"CallSid": f"CA-{mid}", "Digits": "9"}
        sig = RequestValidator(TOKEN).compute_signature(url, params)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            r = await http.post(url, data=params, headers={"X-Twilio-Signature": sig})
        assert r.status_code == 200, r.text

    return choose


def calling_with(
    ledger: CallLedger,
    provider: Provider,
    prod: EventProducer,
    *,
    pacer: Pacer | None = None,
    breaker: CircuitBreaker | None = None,
) -> VoiceCalling:
    return VoiceCalling(
        ledger,
        provider,
        prod,
        base_url=BASE,
        identity=CALLER_ID,
        pacer=pacer or Pacer(0),
        breaker=breaker or CircuitBreaker(),
        retry=RetryPolicy(attempts=3, base_seconds=0.01, cap_seconds=0.01),
    )


@pytest.mark.parametrize("wait", ["retry-pause", "429-hold", "pacer", "breaker-open"])
async def test_a_stop_chosen_while_a_call_waits_stops_it(
    wait: str, db: Any, prod: EventProducer
) -> None:
    ledger = CallLedger(db)
    phone = unique_phone()
    provider = Provider()
    pacer = MeanwhileInThePacer() if wait == "pacer" else Pacer(0)
    breaker = CircuitBreaker()
    calling = calling_with(ledger, provider, prod, pacer=pacer, breaker=breaker)
    choose_stop = stop_on(calling)
    first = outbound_voice(phone, "Your parcel is delayed.")
    await calling.place(calling.from_outbound(first))
    assert len(provider.placed) == 1
    # Handed over before the stop (the dispatcher had not heard of it).
    second = outbound_voice(phone, "Your parcel is delayed again.")

    async def stop() -> None:
        await choose_stop(first.message_id)

    if wait == "retry-pause":
        provider.busy = ProviderBusy("busy", status=503, code="20503", retry_after=None)
        provider.busy_at, provider.before_busy = 2, stop
    elif wait == "429-hold":
        provider.busy = ProviderBusy("slow down", status=429, code="20429", retry_after=0.2)
        provider.busy_at, provider.before_busy = 2, stop
    elif wait == "pacer":
        pacer.meanwhile = stop
    else:
        calling.breaker = CircuitBreaker(threshold=1, cooldown=1.0)
        calling.breaker.failure()  # open: the call waits out the cool-down
    task = asyncio.create_task(calling.place(calling.from_outbound(second)))
    if wait == "breaker-open":

        async def waiting() -> bool:
            row = await db["call_ledger"].find_one({"_id": second.message_id})
            return row is not None and row["status"] == "retry"

        await eventually(waiting, within=5, interval=0.02)
        await stop()
    await asyncio.wait_for(task, timeout=10)

    assert len(provider.placed) == 1, "the call was placed after the customer chose stop"
    assert await outcome(db, second.message_id) == ("failed", OPTED_OUT)
    stored = await db["opt_outs"].find_one({})
    assert stored is not None and phone not in str(stored), "the number is kept only as a hash"


async def test_a_call_handed_over_after_the_stop_is_not_placed_but_a_later_call_back_is(
    db: Any,
    prod: EventProducer,
    infra: dict[str, str],
    namespace: str,
) -> None:
    ledger = CallLedger(db)
    phone = unique_phone()
    provider = Provider()
    calling = calling_with(ledger, provider, prod)
    first = outbound_voice(phone, "Your parcel is delayed.")
    await calling.place(calling.from_outbound(first))
    await stop_on(calling)(first.message_id)
    # Handed over just after the stop, by a dispatcher that had not heard of it yet; for
    # another customer at the number (a shared line), whom the stop did not name.
    handed_over = outbound_voice(phone, "Your parcel is delayed again.")
    # And one for the customer who chose stop, whom preferences heard it for already.
    own = outbound_voice(phone, "Your parcel is delayed.", customer_id=first.customer_id)

    async with Collector(infra["kafka"], namespace, ENGAGEMENT_REPLY) as replies:
        for call in (own, handed_over):
            await calling.place(calling.from_outbound(call))
            assert await outcome(db, call.message_id) == ("failed", OPTED_OUT)
        # Preferences hears of the stop for that customer too; no message is named, so the
        # contact's escalation to the next channel goes on.
        [told] = await eventually(
            lambda: replies.where(customer_id=handed_over.customer_id, intent="stop")
        )
        await asyncio.sleep(0.5)
        # Not told again for the one who chose it: a call handed over before they consented
        # again (the preference centre) must not withdraw that consent.
        assert replies.where(reply_id=f"voice-opted-out-{own.message_id}") == []
    assert (told.channel, told.message_id) == ("voice", None)

    # A call-back the customer asks for after the stop (an SMS "3") is their later word.
    reply = EngagementReply(
        reply_id=f"sms-{handed_over.message_id}",
        customer_id=handed_over.customer_id,
        channel="sms",
        intent="callback",
        at=utc_now(),
        callback_number=phone,
        callback_until=utc_now() + timedelta(hours=1),
    )
    calling.calling_hours = CallingHours("00:00", "00:00")  # any hour
    await calling.callback(reply)
    assert len(provider.placed) == 2, "the call-back asked for after the stop was not placed"

    # Past the hold, a call handed over passed a consent check that knew of the stop: the
    # customer gave consent again (the preference centre), which this service cannot see.
    calling.opt_out_hold = timedelta(0)
    later = outbound_voice(phone, "Your parcel has arrived.")
    await calling.place(calling.from_outbound(later))
    assert len(provider.placed) == 3, "a call handed over after consent was given again"


async def test_a_later_stop_on_a_shared_line_is_told_for_a_customer_who_stopped_before(
    db: Any,
    prod: EventProducer,
    infra: dict[str, str],
    namespace: str,
) -> None:
    ledger = CallLedger(db)
    phone = unique_phone()
    provider = Provider()
    calling = calling_with(ledger, provider, prod)
    a_id = f"cust-{uuid.uuid4().hex[:8]}"
    # Weeks ago A chose stop on a call (preferences heard it for A then); A has consented again.
    await ledger.opt_out(number_key(phone), at=utc_now() - timedelta(days=20), customer_id=a_id)
    to_b = outbound_voice(phone, "Your parcel is delayed.")
    await calling.place(calling.from_outbound(to_b))
    assert len(provider.placed) == 1
    # Handed over just before the line chooses stop again, on a call to B who shares it.
    to_a = outbound_voice(phone, "Your parcel is delayed.", customer_id=a_id)
    await stop_on(calling)(to_b.message_id)

    async with Collector(infra["kafka"], namespace, ENGAGEMENT_REPLY) as replies:
        await calling.place(calling.from_outbound(to_a))
        assert await outcome(db, to_a.message_id) == ("failed", OPTED_OUT)
        # Preferences hears of today's stop for A too, or A's voice consent stays.
        [told] = await eventually(lambda: replies.where(customer_id=a_id, intent="stop"))
    assert (told.channel, told.message_id) == ("voice", None)
