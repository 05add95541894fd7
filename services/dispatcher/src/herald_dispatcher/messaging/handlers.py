"""Consumer handlers: local views and contact requests."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from herald_contracts import CaseState, ContactPreferences, ContactRequest, Topics
from herald_dispatcher.adapters.store import Views
from herald_dispatcher.policy import Dispatcher
from herald_kit import decode


async def handle_view(views: Views, namespace: str, record: ConsumerRecord[bytes, bytes]) -> None:
    """Apply a snapshot or tombstone from a compacted topic to the local view."""
    if record.topic == Topics.CONTACTS_PREFERENCES.name(namespace):
        if record.value is None:
            if record.key:
                await views.erase_contact(record.key.decode())
            return
        await views.put_contact(decode(record, ContactPreferences).data)
    elif record.topic == Topics.CASES_STATE.name(namespace):
        if record.value is None:
            return
        await views.put_case(decode(record, CaseState).data)


async def handle_request(dispatcher: Dispatcher, record: ConsumerRecord[bytes, bytes]) -> None:
    """Decide a contact request."""
    await dispatcher.handle(decode(record, ContactRequest).data)
