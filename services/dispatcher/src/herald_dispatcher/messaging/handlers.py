"""Consumer handlers: local views, contact requests, delivery statuses and replies."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka import ConsumerRecord

from herald_contracts import (
    CaseState,
    ContactPreferences,
    ContactRequest,
    DeliveryStatus,
    EngagementReply,
    Topics,
)
from herald_dispatcher.adapters.store import Views
from herald_dispatcher.metrics import VIEW_LAG
from herald_dispatcher.policy import Dispatcher
from herald_kit import decode


async def handle_view(views: Views, namespace: str, record: ConsumerRecord[bytes, bytes]) -> None:
    """Apply a snapshot or tombstone from a compacted topic to the local view."""
    if record.topic == Topics.CONTACTS_PREFERENCES.name(namespace):
        if record.value is None:
            if record.key:
                await views.erase_contact(record.key.decode())
        else:
            await views.put_contact(decode(record, ContactPreferences).data)
        topic = Topics.CONTACTS_PREFERENCES.base
    elif record.topic == Topics.CASES_STATE.name(namespace):
        if record.value is not None:
            await views.put_case(decode(record, CaseState).data)
        topic = Topics.CASES_STATE.base
    else:
        return
    age = datetime.now(UTC).timestamp() - record.timestamp / 1000
    VIEW_LAG.labels(topic).set(max(0.0, age))


async def handle_request(dispatcher: Dispatcher, record: ConsumerRecord[bytes, bytes]) -> None:
    """Decide a contact request."""
    await dispatcher.handle(decode(record, ContactRequest).data)


async def handle_outcome(
    dispatcher: Dispatcher, namespace: str, record: ConsumerRecord[bytes, bytes]
) -> None:
    """A delivery status or an engagement reply: stop or advance escalation."""
    if record.topic == Topics.DELIVERY_STATUS.name(namespace):
        await dispatcher.on_status(decode(record, DeliveryStatus).data)
    elif record.topic == Topics.ENGAGEMENT_REPLIES.name(namespace):
        await dispatcher.on_reply(decode(record, EngagementReply).data)
