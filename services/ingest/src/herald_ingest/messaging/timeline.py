"""Consume delivery.status.v1 and engagement.replies.v1 into case timelines (group ingest-timeline).

So an agent, or the customer, sees every contact and every answer beside the case's events.
Contacts and replies keep the customer they were with: a case can have many customers, and each
one's status page shows only their own.
"""

from __future__ import annotations

from aiokafka import ConsumerRecord
from pydantic import BaseModel

from herald_contracts import (
    CONTACT_FAILURES,
    DELIVERY_STATUS,
    ENGAGEMENT_REPLY,
    DeliveryStatus,
    EngagementReply,
)
from herald_ingest.adapters.repository import CaseRepository
from herald_kit import DecodeError, Event, decode


async def handle_timeline(repo: CaseRepository, record: ConsumerRecord[bytes, bytes]) -> None:
    """Record a contact outcome or a reply on its case; messages about no case are skipped."""
    event: Event[BaseModel] = decode(record)
    if event.type == DELIVERY_STATUS.type:
        status = DeliveryStatus.model_validate(event.data)
        if status.case_id is None or status.status == "suppressed" or _unsent(status):
            # A suppression is no contact, nor a contact the dispatcher failed before any
            # message went out; the dispatcher's explain API says why (and the customer-facing
            # page should not list what the customer never received).
            return
        # Addresses never reach the timeline: channel and outcome are what an agent needs.
        await repo.add_activity(
            {
                "_id": f"delivery|{status.message_id}|{status.status}",
                "case_id": status.case_id,
                "customer_id": status.customer_id,
                "kind": "contact",
                "channel": status.channel,
                "status": status.status,
                "attempt_of": status.request_id,
                "reason": status.reason,
                "at": status.at,
            }
        )
    elif event.type == ENGAGEMENT_REPLY.type:
        reply = EngagementReply.model_validate(event.data)
        if reply.case_id is None:
            return
        await repo.add_activity(
            {
                "_id": f"reply|{reply.reply_id}",
                "case_id": reply.case_id,
                "customer_id": reply.customer_id,
                "kind": "reply",
                "channel": reply.channel,
                "intent": reply.intent,
                "text": reply.text,
                "at": reply.at,
            }
        )
    else:
        raise DecodeError(f"unexpected event type {event.type!r}", field="ce_type")


def _unsent(status: DeliveryStatus) -> bool:
    """The dispatcher's `failed` for a contact no message could be made for (a sender's
    failures carry the provider's code or their own words, never one of its rules)."""
    return (
        status.status == "failed"
        and status.error_code is None
        and status.provider_id is None
        and status.reason in CONTACT_FAILURES
    )
