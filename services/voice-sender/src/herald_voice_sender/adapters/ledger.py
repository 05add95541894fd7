"""The call ledger: 'sending' before the provider call, 'sent' with the call sid after."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, OperationFailure

from herald_kit import Doc, insert_if_absent

T = TypeVar("T")


async def transient(op: Callable[[], Awaitable[T]], attempts: int = 8) -> T:
    """Run a single-document operation, retrying what the database reports as momentary.

    FerretDB on SQLite answers "database is locked" (SQLITE_BUSY) under concurrent writes; a
    ledger write must not turn into a dead-lettered message for that.
    """
    delay = 0.02
    for attempt in range(attempts):
        try:
            return await op()
        except (OperationFailure, AutoReconnect) as exc:
            busy = isinstance(exc, AutoReconnect) or "locked" in str(exc) or "BUSY" in str(exc)
            if not busy or attempt == attempts - 1:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


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
        if await transient(lambda: insert_if_absent(self.rows, row)):
            return True, None
        claimed = await transient(
            lambda: self.rows.find_one_and_update(
                {"_id": message_id, "status": "retry"},
                {"$set": {"status": "sending", "at": now}},
                return_document=ReturnDocument.AFTER,
            )
        )
        if claimed is not None:
            return True, None
        return False, await transient(lambda: self.rows.find_one({"_id": message_id}))

    async def set(self, message_id: str, status: str, **fields: object) -> None:
        """Record a status (and call sid, error code...)."""
        await transient(
            lambda: self.rows.update_one(
                {"_id": message_id}, {"$set": {"status": status, **fields}}
            )
        )

    async def get(self, message_id: str) -> Doc | None:
        """A row by message id."""
        return await transient(lambda: self.rows.find_one({"_id": message_id}))

    async def first_time(self, message_id: str, event: str) -> bool:
        """True the first time an outcome is recorded for a call (webhooks repeat)."""
        result = await transient(
            lambda: self.rows.update_one(
                {"_id": message_id, "events": {"$ne": event}}, {"$push": {"events": event}}
            )
        )
        return result.modified_count == 1
