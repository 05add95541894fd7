"""A message that waits in the pacer past its deadline is not sent: the deadline is checked
again once the pacer lets it go, not only when the message is claimed.

Real database and broker; the provider is a stand-in that counts requests. The pacer is the
real one, held as a 429's Retry-After holds it, for longer than the message has left.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from twilio_support import outbound_sms, outbound_voice

from herald_contracts import utc_now
from herald_kit import EventProducer, Pacer
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.adapters.provider import Sent
from herald_sms_sender.sending import SmsSending
from herald_voice_sender.adapters.ledger import CallLedger
from herald_voice_sender.adapters.provider import Placed
from herald_voice_sender.calling import VoiceCalling
from support import unique_phone

IDENTITY = "+15005550006"


class Provider:
    """Counts provider requests (SMS sends and placed calls); accepts each."""

    def __init__(self) -> None:
        self.requests = 0

    async def send(self, *, to: str, body: str, status_callback: str | None) -> Sent:
        self.requests += 1
        return Sent(provider_id=f"SM{self.requests:032d}", status="queued")

    async def find_sent(self, *, to: str, body: str, since: datetime) -> list[str]:
        return []

    async def call(
        self, *, to: str, url: str, status_callback: str, machine_detection: bool
    ) -> Placed:
        self.requests += 1
        return Placed(provider_id=f"CA{self.requests:032d}", status="queued")

    async def find_placed(self, *, to: str, since: datetime) -> list[str]:
        return []

    async def close(self) -> None:
        pass


def held_pacer() -> Pacer:
    """A pacer the provider's 429 (Retry-After: 2) holds for 2 s."""
    pacer = Pacer(1.0)
    pacer.hold(IDENTITY, 2.0)
    return pacer


async def test_an_sms_held_in_the_pacer_past_its_deadline_is_not_sent(
    mongo: Any, db_name: Callable[[str], str], prod: EventProducer
) -> None:
    db = mongo[db_name("sms_sender")]
    provider = Provider()
    msg = outbound_sms(unique_phone(), send_by=utc_now() + timedelta(seconds=1))
    sending = SmsSending(
        Ledger(db), provider, prod, callback_url="http://127.0.0.1:1/s", identity=IDENTITY
    )
    sending.pacer = held_pacer()
    await sending.send(msg)
    assert provider.requests == 0
    row = await db["send_ledger"].find_one({"_id": msg.message_id})
    assert (row["status"], row["error_code"]) == ("failed", "expired")


async def test_a_call_held_in_the_pacer_past_its_deadline_is_not_placed(
    mongo: Any, db_name: Callable[[str], str], prod: EventProducer
) -> None:
    db = mongo[db_name("voice_sender")]
    provider = Provider()
    msg = outbound_voice(unique_phone(), "Your engineer is booked.")
    msg = msg.model_copy(update={"send_by": utc_now() + timedelta(seconds=1)})
    calling = VoiceCalling(
        CallLedger(db), provider, prod, base_url="http://127.0.0.1:1", identity=IDENTITY
    )
    calling.pacer = held_pacer()
    await calling.place(VoiceCalling.from_outbound(msg), say=msg.say)
    assert provider.requests == 0
    row = await db["call_ledger"].find_one({"_id": msg.message_id})
    assert (row["status"], row["error_code"]) == ("failed", "expired")
