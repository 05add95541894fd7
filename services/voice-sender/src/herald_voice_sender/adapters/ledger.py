"""The call ledger: 'sending' before the provider call, 'sent' with the call sid after."""

from __future__ import annotations

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from herald_kit import Doc, RetryingSendLedger, transient


class CallLedger(RetryingSendLedger):
    """One row per message id (a call); its status says whether a call may be placed."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        super().__init__(db, "call_ledger")

    async def ensure_indexes(self) -> None:
        """Callbacks find a customer's latest call (its number) for a call-back request."""
        await self.rows.create_index([("customer_id", 1), ("at", DESCENDING)])

    async def first_time(self, message_id: str, event: str) -> bool:
        """True the first time an outcome is recorded for a call (webhooks repeat)."""
        result = await transient(
            lambda: self.rows.update_one(
                {"_id": message_id, "events": {"$ne": event}}, {"$push": {"events": event}}
            )
        )
        return result.modified_count == 1
