"""The call ledger: 'sending' before the provider call, 'sent' with the call sid after."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from herald_kit import Doc, insert_if_absent


class CallLedger:
    """One row per message id (a call); its status says whether a call may be placed."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.rows = db["call_ledger"]

    async def ensure_indexes(self) -> None:
        """Callbacks find a customer's latest call (its number) for a call-back request."""
        await self.rows.create_index([("customer_id", 1), ("at", DESCENDING)])

    async def claim(
        self, message_id: str, *, now: datetime, meta: dict[str, Any] | None = None
    ) -> tuple[bool, Doc | None]:
        """(True, None) when this caller may place the call; (False, row) when it may not."""
        row = {"_id": message_id, "status": "sending", "at": now, **(meta or {})}
        if await insert_if_absent(self.rows, row):
            return True, None
        claimed = await self.rows.find_one_and_update(
            {"_id": message_id, "status": "retry"},
            {"$set": {"status": "sending", "at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if claimed is not None:
            return True, None
        return False, await self.rows.find_one({"_id": message_id})

    async def set(self, message_id: str, status: str, **fields: object) -> None:
        """Record a status (and call sid, error code...)."""
        await self.rows.update_one({"_id": message_id}, {"$set": {"status": status, **fields}})

    async def get(self, message_id: str) -> Doc | None:
        """A row by message id."""
        return await self.rows.find_one({"_id": message_id})

    async def first_time(self, message_id: str, event: str) -> bool:
        """True the first time an outcome is recorded for a call (webhooks repeat)."""
        result = await self.rows.update_one(
            {"_id": message_id, "events": {"$ne": event}}, {"$push": {"events": event}}
        )
        return result.modified_count == 1
