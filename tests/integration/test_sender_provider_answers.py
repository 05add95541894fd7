"""What the SMS and voice senders do with the provider's answers that are not a plain yes or no.

Real database and broker. An answer that leaves the outcome unknown (a timeout, a 5xx that
may have been taken) is looked up and, not found, reported `unknown`: never sent a second
time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest
from twilio_support import outbound_sms, producer

from herald_kit import EventProducer
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.adapters.provider import (
    ProviderTimeout,
    Sent,
)
from herald_sms_sender.sending import RetryPolicy, SmsSending
from support import unique_phone

IDENTITY = "+15005550006"


@pytest.fixture
async def prod(infra: dict[str, str], namespace: str) -> AsyncIterator[EventProducer]:
    async with producer(infra["kafka"], namespace) as p:
        yield p


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
