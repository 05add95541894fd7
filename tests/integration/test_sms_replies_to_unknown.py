"""A reply answers the latest SMS that may have reached the number, 'unknown' ones included.

Real database and broker. Twilio may take a message and the answer be lost (a timeout): the
row is 'unknown', yet the customer has the SMS and answers it. That answer must name that
message, not an older one, and a STOP to it must reach preferences (an engagement.replies.v1
`stop` for the customer) even when no other message went to the number. A message that never
went out (refused by Twilio) is passed over, and so is one whose call to Twilio is still in
flight: the customer does not have it yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest
from twilio_support import Collector, outbound_sms

from herald_contracts import ENGAGEMENT_REPLY, EngagementReply, OutboundSms
from herald_kit import EventProducer
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.adapters.provider import ProviderRejected, ProviderTimeout, Sent
from herald_sms_sender.replies import Replies
from herald_sms_sender.sending import SmsSending
from support import eventually, unique_phone


class Provider:
    """Takes each SMS, answers as told per body: 'lost' (taken, the answer lost, and not
    found in the Messages list yet), 'refused' (a permanent 4xx: nothing went out) or 'held'
    (the call waits for `release` before it is refused)."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.taken = 0
        self.release = asyncio.Event()

    async def send(self, *, to: str, body: str, status_callback: str | None) -> Sent:
        answer = self.answers.get(body, "taken")
        if answer == "held":
            await self.release.wait()
            answer = "refused"
        if answer == "refused":
            raise ProviderRejected("unreachable", code="21612")
        self.taken += 1
        if answer == "lost":
            raise ProviderTimeout("twilio did not answer in time", code="timeout")
        return Sent(provider_id=f"SM{self.taken:032d}", status="queued")

    async def find_sent(self, *, to: str, body: str, since: datetime) -> list[str]:
        return []

    async def close(self) -> None:
        pass


class Setup:
    def __init__(self, db: Any, prod: EventProducer) -> None:
        self.db = db
        self.ledger = Ledger(db)
        self.provider = Provider()
        self.sending = SmsSending(
            self.ledger, self.provider, prod, callback_url="http://127.0.0.1:1/s"
        )
        self.replies = Replies(self.ledger, prod, keywords={"1": "confirm"}, help_answer="help")
        self.phone = unique_phone()

    async def send(self, answer: str, *, customer_id: str = "cust-1") -> OutboundSms:
        msg = outbound_sms(self.phone, customer_id=customer_id)
        self.provider.answers[msg.body] = answer
        await self.sending.send(msg)
        return msg

    async def status(self, msg: OutboundSms) -> str:
        row = await self.db["send_ledger"].find_one({"_id": msg.message_id})
        return str(row["status"])


@pytest.fixture
async def setup(
    mongo: Any, db_name: Callable[[str], str], prod: EventProducer
) -> AsyncIterator[Setup]:
    s = Setup(mongo[db_name("sms_sender")], prod)
    await s.ledger.ensure_indexes()
    yield s


async def reply_named(replies: Collector, reply_id: str) -> EngagementReply:
    found = await eventually(lambda: replies.where(reply_id=reply_id), within=15)
    assert len(found) == 1
    reply: EngagementReply = found[0]
    return reply


async def test_a_reply_to_an_sms_left_unknown_answers_it_not_an_older_one(
    setup: Setup, infra: dict[str, str], namespace: str
) -> None:
    older = await setup.send("taken")
    latest = await setup.send("lost")
    assert (await setup.status(older), await setup.status(latest)) == ("sent", "unknown")
    async with Collector(infra["kafka"], namespace, ENGAGEMENT_REPLY) as replies:
        await setup.replies.handle(sid="SMin1", from_=setup.phone, body="1")
        reply = await reply_named(replies, "sms-SMin1")
    assert (reply.intent, reply.message_id) == ("confirm", latest.message_id)
    assert reply.case_id == latest.case_id


async def test_a_stop_to_the_only_sms_left_unknown_reaches_preferences(
    setup: Setup, infra: dict[str, str], namespace: str
) -> None:
    msg = await setup.send("lost", customer_id="cust-unknown")
    assert await setup.status(msg) == "unknown"
    async with Collector(infra["kafka"], namespace, ENGAGEMENT_REPLY) as replies:
        await setup.replies.handle(sid="SMin2", from_=setup.phone, body="STOP")
        reply = await reply_named(replies, "sms-SMin2")
    assert (reply.intent, reply.customer_id, reply.message_id) == (
        "stop",
        "cust-unknown",
        msg.message_id,
    )


async def test_a_newer_sms_that_never_went_out_is_passed_over(
    setup: Setup, infra: dict[str, str], namespace: str
) -> None:
    sent = await setup.send("taken")
    refused = await setup.send("refused")
    assert await setup.status(refused) == "failed"
    async with Collector(infra["kafka"], namespace, ENGAGEMENT_REPLY) as replies:
        await setup.replies.handle(sid="SMin3", from_=setup.phone, body="1")
        reply = await reply_named(replies, "sms-SMin3")
    assert reply.message_id == sent.message_id


async def test_a_reply_while_a_newer_sms_is_in_flight_answers_the_one_received(
    setup: Setup, infra: dict[str, str], namespace: str
) -> None:
    sent = await setup.send("taken")
    in_flight = asyncio.create_task(setup.send("held"))
    try:
        await eventually(lambda: setup.db["send_ledger"].find_one({"status": "sending"}))
        async with Collector(infra["kafka"], namespace, ENGAGEMENT_REPLY) as replies:
            await setup.replies.handle(sid="SMin4", from_=setup.phone, body="1")
            reply = await reply_named(replies, "sms-SMin4")
        assert (reply.message_id, reply.case_id) == (sent.message_id, sent.case_id)
    finally:
        setup.provider.release.set()
        refused = await in_flight
    assert await setup.status(refused) == "failed"
