"""A message whose partition moves to another consumer mid-wait is sent by one of them only.

Real database and broker. Two senders share one ledger, as two consumers do across a Kafka
rebalance: the first claims a message and waits (for the pacer, or in a retry pause longer
than the revoke grace); the partition moves, the second claims the still unsent row again and
sends it; when the first wakes up the row is no longer its claim, so it must not send too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from twilio_support import outbound_sms, outbound_voice

from herald_contracts import utc_now
from herald_kit import CircuitBreaker, EventProducer, Pacer
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.adapters.provider import ProviderBusy, Sent
from herald_sms_sender.sending import RetryPolicy, SmsSending
from herald_voice_sender.adapters.ledger import CallLedger
from herald_voice_sender.adapters.provider import Placed
from herald_voice_sender.calling import RetryPolicy as CallRetryPolicy
from herald_voice_sender.calling import VoiceCalling
from support import unique_phone


class GatedPacer(Pacer):
    """A pacer whose `block_at`-th wait lasts until the test opens it (a long pacing wait)."""

    def __init__(self, block_at: int = 1) -> None:
        super().__init__(1000.0)  # paced, so a claim leaves the row 'queued'
        self.block_at = block_at
        self.calls = 0
        self.waiting = asyncio.Event()
        self.opened = asyncio.Event()

    async def acquire(self, identity: str) -> bool:
        self.calls += 1
        if self.calls == self.block_at:
            self.waiting.set()
            await self.opened.wait()
            return True
        return False


class Provider:
    """Counts provider requests (SMS sends and placed calls); answers 'busy' `busy` times."""

    def __init__(self, busy: int = 0) -> None:
        self.busy = busy
        self.requests = 0
        self.accepted = 0

    def _request(self) -> str:
        self.requests += 1
        if self.busy > 0:
            self.busy -= 1
            raise ProviderBusy("busy", status=503, code="20503", retry_after=None)
        self.accepted += 1
        return f"{self.accepted:032d}"

    async def send(self, *, to: str, body: str, status_callback: str | None) -> Sent:
        return Sent(provider_id="SM" + self._request(), status="queued")

    async def find_sent(self, *, to: str, body: str, since: datetime) -> list[str]:
        return []

    async def call(
        self, *, to: str, url: str, status_callback: str, machine_detection: bool
    ) -> Placed:
        return Placed(provider_id="CA" + self._request(), status="queued")

    async def find_placed(self, *, to: str, since: datetime) -> list[str]:
        return []


class Rebalance:
    """One message sent twice across a rebalance: the first sender claims it and waits (for the
    pacer, or in a retry pause after `busy` 'busy' answers); the second claims it again and
    sends meanwhile; then the first wakes."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.provider = Provider(busy=busy)
        # With a 'busy' answer first, the wait that outlasts the rebalance comes after the pause.
        self.pacer = GatedPacer(block_at=1 + busy)

    async def send_twice(self, send: Callable[[Pacer], Awaitable[object]]) -> None:
        """`send` with the gated pacer, and meanwhile unpaced; the provider is asked once (after
        its 'busy' answers)."""
        task = asyncio.create_task(send(self.pacer))
        await asyncio.wait_for(self.pacer.waiting.wait(), timeout=10)
        await send(Pacer(0))
        self.pacer.opened.set()
        await asyncio.wait_for(task, timeout=10)
        assert self.provider.accepted == 1 and self.provider.requests == 1 + self.busy


@pytest.fixture(params=[0, 1], ids=["pacer-wait", "retry-pause"])
def rebalance(request: pytest.FixtureRequest) -> Rebalance:
    return Rebalance(busy=request.param)


async def test_an_sms_claimed_again_while_its_first_sender_waits_is_sent_once(
    rebalance: Rebalance, mongo: Any, db_name: Callable[[str], str], prod: EventProducer
) -> None:
    db = mongo[db_name("sms_sender")]
    retry = RetryPolicy(base_seconds=0.01, cap_seconds=0.01)
    msg = outbound_sms(unique_phone())

    def send(pacer: Pacer) -> Awaitable[object]:
        return SmsSending(
            Ledger(db),
            rebalance.provider,
            prod,
            callback_url="http://127.0.0.1:1/s",
            pacer=pacer,
            retry=retry,
        ).send(msg)

    await rebalance.send_twice(send)
    row = await db["send_ledger"].find_one({"_id": msg.message_id})
    assert row["status"] == "sent" and row["provider_id"] == "SM" + "1".zfill(32)


async def test_a_call_claimed_again_while_its_first_caller_waits_is_placed_once(
    rebalance: Rebalance, mongo: Any, db_name: Callable[[str], str], prod: EventProducer
) -> None:
    db = mongo[db_name("voice_sender")]
    msg = outbound_voice(unique_phone(), "Your engineer is booked for 2 pm.")
    call = VoiceCalling.from_outbound(msg)
    retry = CallRetryPolicy(base_seconds=0.01, cap_seconds=0.01)

    def place(pacer: Pacer) -> Awaitable[object]:
        caller = VoiceCalling(
            CallLedger(db),
            rebalance.provider,
            prod,
            base_url="http://127.0.0.1:1",
            identity="+15005550006",
            pacer=pacer,
            retry=retry,
        )
        return caller.place(call)

    await rebalance.send_twice(place)
    row = await db["call_ledger"].find_one({"_id": msg.message_id})
    assert row["status"] == "sent" and row["provider_id"] == "CA" + "1".zfill(32)


class Trial:
    """A provider outage opens the breaker; after the cool-down the half-open trial message is
    claimed again elsewhere while it waits for the pacer, so it never reaches the provider."""

    def __init__(self) -> None:
        self.breaker = CircuitBreaker(threshold=1, cooldown=0.2)
        self.provider = Provider(busy=1)  # the outage: one 503
        self.pacer = GatedPacer(block_at=2)  # the trial waits for its slot

    async def run(
        self,
        send: Callable[[str], Awaitable[object]],
        claim_again: Callable[[str], Awaitable[object]],
    ) -> None:
        """`send` the outage's message, the trial and one more message (by message id)."""
        await send("down")
        assert self.breaker.state == "open" and self.provider.requests == 1
        await asyncio.sleep(0.25)  # the cool-down: half-open
        task = asyncio.create_task(send("trial"))
        await asyncio.wait_for(self.pacer.waiting.wait(), timeout=10)
        await claim_again("trial")  # the partition moved: another consumer has the row now
        self.pacer.opened.set()
        await asyncio.wait_for(task, timeout=10)
        assert self.provider.requests == 1  # the trial never went out
        # With the trial handed back the next message is the trial, and the provider is fine.
        await asyncio.wait_for(send("after"), timeout=10)


async def test_an_sms_trial_claimed_elsewhere_does_not_hold_the_breaker_half_open(
    mongo: Any, db_name: Callable[[str], str], prod: EventProducer
) -> None:
    db = mongo[db_name("sms_sender")]
    trial = Trial()
    sending = SmsSending(
        Ledger(db),
        trial.provider,
        prod,
        callback_url="http://127.0.0.1:1/s",
        pacer=trial.pacer,
        breaker=trial.breaker,
        retry=RetryPolicy(attempts=1),
    )
    msgs = {name: outbound_sms(unique_phone()) for name in ("down", "trial", "after")}

    async def claim_again(name: str) -> None:
        await Ledger(db).claim(msgs[name].message_id, now=utc_now(), meta={"claim": "next"})

    await trial.run(lambda name: sending.send(msgs[name]), claim_again)
    row = await db["send_ledger"].find_one({"_id": msgs["after"].message_id})
    assert row["status"] == "sent" and trial.provider.accepted == 1
    assert trial.breaker.state == "closed"


async def test_a_call_trial_claimed_elsewhere_does_not_hold_the_breaker_half_open(
    mongo: Any, db_name: Callable[[str], str], prod: EventProducer
) -> None:
    db = mongo[db_name("voice_sender")]
    trial = Trial()
    caller = VoiceCalling(
        CallLedger(db),
        trial.provider,
        prod,
        base_url="http://127.0.0.1:1",
        identity="+15005550006",
        pacer=trial.pacer,
        breaker=trial.breaker,
        retry=CallRetryPolicy(attempts=1),
    )
    calls = {
        name: VoiceCalling.from_outbound(outbound_voice(unique_phone(), "Your engineer is booked."))
        for name in ("down", "trial", "after")
    }

    async def claim_again(name: str) -> None:
        await CallLedger(db).claim(calls[name].message_id, now=utc_now(), meta={"claim": "next"})

    await trial.run(lambda name: caller.place(calls[name]), claim_again)
    row = await db["call_ledger"].find_one({"_id": calls["after"].message_id})
    assert row["status"] == "sent" and trial.provider.accepted == 1
    assert trial.breaker.state == "closed"
