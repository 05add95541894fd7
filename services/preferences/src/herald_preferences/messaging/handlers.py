"""Consumers: STOP/START and unsubscribes from engagement.replies.v1, hard bounces and
unreachable numbers from delivery.status.v1. Group "preferences".

Idempotent: a reply's ledger entries carry the reply id as proof and a redelivered reply whose
proof is already in the ledger changes nothing; an address status that is already set is not
set again.
"""

from __future__ import annotations

import logging

from aiokafka import ConsumerRecord

from herald_contracts import DeliveryStatus, EngagementReply, Topics, keyword, utc_now
from herald_kit import PreconditionFailed, RetryableError, decode
from herald_preferences.adapters.repository import ContactRepository
from herald_preferences.domain.bounces import address_status
from herald_preferences.domain.ledger import ALL_TOPICS, Change
from herald_preferences.domain.service import with_address_status, with_consent_changes
from herald_preferences.messaging.outbox import Outbox

log = logging.getLogger("herald.preferences.consumer")
ATTEMPTS = 5


def reply_changes(reply: EngagementReply) -> tuple[list[Change], str] | None:
    """The consent changes a reply asks for, and the ledger source; None when it asks none."""
    if reply.channel == "web":
        return None
    word = keyword(reply.text)
    # The evidence names how the customer said it: a keypad press on a call is not a text.
    source = {"email": "email-unsubscribe", "voice": "voice-keypad"}.get(
        reply.channel, "sms-keyword"
    )
    if reply.intent == "stop" or (reply.intent in ("other", "help") and word == "stop"):
        return [Change(ALL_TOPICS, reply.channel, False)], source
    if reply.intent == "start" or (reply.intent == "other" and word == "start"):
        return [Change(ALL_TOPICS, reply.channel, True)], source
    if reply.intent == "unsubscribe":
        # One-click unsubscribe names the topic of the message; without one it is a STOP.
        topic = reply.topic or ALL_TOPICS
        return [Change(topic, reply.channel, False)], "email-unsubscribe"
    return None


class PreferenceHandlers:
    """Handle records of both topics the preferences group reads."""

    def __init__(self, repo: ContactRepository, outbox: Outbox, namespace: str) -> None:
        self.repo = repo
        self.outbox = outbox
        self.replies_topic = Topics.ENGAGEMENT_REPLIES.name(namespace)
        self.status_topic = Topics.DELIVERY_STATUS.name(namespace)

    async def __call__(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Dispatch by topic; bad records raise DecodeError (→ DLQ)."""
        if record.topic == self.replies_topic:
            await self.on_reply(decode(record, EngagementReply).data)
        elif record.topic == self.status_topic:
            await self.on_status(decode(record, DeliveryStatus).data)

    async def on_reply(self, reply: EngagementReply) -> None:
        """Apply a STOP/START/unsubscribe to the ledger and publish the snapshot at once."""
        wanted = reply_changes(reply)
        if wanted is None:
            return
        changes, source = wanted
        proof = f"reply:{reply.reply_id}"
        for _ in range(ATTEMPTS):
            current = await self.repo.get(reply.customer_id)
            if current is None or current.get("erased"):
                log.info("reply for an unknown contact ignored", extra={"intent": reply.intent})
                return
            ledger = await self.repo.ledger_of(reply.customer_id, current)
            if any(e.get("proof") == proof for e in [*ledger, *current.get("pending", [])]):
                await self.outbox.try_flush(reply.customer_id, None)
                return
            doc = with_consent_changes(
                current,
                changes,
                ledger=ledger,
                source=source,
                actor=f"customer via {reply.channel}",
                now=utc_now(),
                proof=proof,
            )
            claim = await self.outbox.intend(reply.customer_id)
            try:
                await self.repo.replace(doc, expected_version=current["version"])
            except PreconditionFailed:
                continue  # a concurrent write: read again and re-apply
            await self.outbox.flush(reply.customer_id, claim)
            return
        raise RetryableError("contact kept changing; retrying the reply")

    async def on_status(self, status: DeliveryStatus) -> None:
        """Mark an address bounced or unreachable after a hard failure."""
        new = address_status(status)
        if new is None or status.channel is None:
            return  # not a hard failure (a `suppressed` decision names no message at all)
        for _ in range(ATTEMPTS):
            current = await self.repo.get(status.customer_id)
            if current is None or current.get("erased"):
                return
            doc = with_address_status(current, status.channel, new, now=utc_now())
            if doc is None:
                await self.outbox.try_flush(status.customer_id, None)
                return
            claim = await self.outbox.intend(status.customer_id)
            try:
                await self.repo.replace(doc, expected_version=current["version"])
            except PreconditionFailed:
                continue
            await self.outbox.flush(status.customer_id, claim)
            return
        raise RetryableError("contact kept changing; retrying the status")
