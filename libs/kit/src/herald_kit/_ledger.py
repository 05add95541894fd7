"""The senders' send ledger: 'sending' before the provider call, 'sent' with its id after.

Shared by every channel sender so that "never send twice" is implemented once: a row per
message id, created with an insert-if-absent on the primary key (no transactions needed).
"""

from __future__ import annotations

from datetime import datetime

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from herald_kit._mongo import Doc, insert_if_absent


class SendLedger:
    """One row per message id; the row's status says whether a send may happen.

    Statuses: 'sending' (claimed, the provider may have been called), 'retry' (the provider
    refused with a passing error, so nothing went out), 'sent', 'failed', 'unknown'.
    """

    def __init__(self, db: AsyncDatabase[Doc], collection: str = "send_ledger") -> None:
        self.rows = db[collection]

    async def ensure_indexes(self) -> None:
        """Callbacks look rows up by the provider's id."""
        await self.rows.create_index("provider_id", sparse=True)

    async def claim(self, message_id: str, *, now: datetime) -> tuple[bool, Doc | None]:
        """(True, None) when this caller may send; (False, row) when the row forbids it.

        A row in 'retry' may be claimed again: the provider said nothing went out.
        """
        if await insert_if_absent(self.rows, {"_id": message_id, "status": "sending", "at": now}):
            return True, None
        row = await self.rows.find_one_and_update(
            {"_id": message_id, "status": "retry"},
            {"$set": {"status": "sending", "at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if row is not None:
            return True, None
        return False, await self.rows.find_one({"_id": message_id})

    async def set(self, message_id: str, status: str, **fields: object) -> None:
        """Record a status (and provider id, error code...)."""
        await self.rows.update_one({"_id": message_id}, {"$set": {"status": status, **fields}})

    async def get(self, message_id: str) -> Doc | None:
        """The row of a message id."""
        return await self.rows.find_one({"_id": message_id})

    async def by_provider_id(self, provider_id: str) -> Doc | None:
        """The row of a provider's message id."""
        return await self.rows.find_one({"provider_id": provider_id})
