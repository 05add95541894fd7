"""The send ledger: 'sending' before the provider call, 'sent' with its id after; opt-outs."""

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


class Ledger:
    """One row per message id; the row's status says whether a send may happen."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.rows = db["send_ledger"]
        self.opt_outs = db["opt_outs"]

    async def ensure_indexes(self) -> None:
        """Callbacks look rows up by the provider's id; replies by the number they came from."""
        await self.rows.create_index("provider_id", sparse=True)
        await self.rows.create_index([("number_key", 1), ("at", DESCENDING)])

    async def claim(
        self, message_id: str, *, now: datetime, meta: dict[str, Any] | None = None
    ) -> tuple[bool, Doc | None]:
        """(True, None) when this caller may send; (False, row) when the row forbids it.

        A claimed row is 'queued' (nothing in flight) until `sending()` marks the provider call.
        A row in 'queued' or 'retry' (the provider refused with a retryable answer, so nothing
        went out) may be claimed again, e.g. after a crash while waiting for the pacer.
        """
        row = {"_id": message_id, "status": "queued", "at": now, **(meta or {})}
        if await transient(lambda: insert_if_absent(self.rows, row)):
            return True, None
        claimed = await transient(
            lambda: self.rows.find_one_and_update(
                {"_id": message_id, "status": {"$in": ["retry", "queued"]}},
                {"$set": {"status": "queued", "at": now}},
                return_document=ReturnDocument.AFTER,
            )
        )
        if claimed is not None:
            return True, None
        return False, await transient(lambda: self.rows.find_one({"_id": message_id}))

    async def sending(self, message_id: str, *, now: datetime) -> None:
        """The provider call is about to be made: from here a crash leaves the outcome unknown."""
        await transient(
            lambda: self.rows.update_one(
                {"_id": message_id}, {"$set": {"status": "sending", "sending_at": now}}
            )
        )

    async def set(self, message_id: str, status: str, **fields: object) -> None:
        """Record a status (and provider id, error code...)."""
        await transient(
            lambda: self.rows.update_one(
                {"_id": message_id}, {"$set": {"status": status, **fields}}
            )
        )

    async def get(self, message_id: str) -> Doc | None:
        """A row by message id."""
        return await transient(lambda: self.rows.find_one({"_id": message_id}))

    async def by_provider_id(self, provider_id: str) -> Doc | None:
        """The row of a provider's message id."""
        return await transient(lambda: self.rows.find_one({"provider_id": provider_id}))

    async def last_to(self, number_key: str) -> Doc | None:
        """The latest message sent to a number: what an inbound reply most likely answers."""
        return await transient(
            lambda: self.rows.find_one(
                {"number_key": number_key, "status": {"$in": ["sent", "delivered"]}},
                sort=[("at", DESCENDING)],
            )
        )

    async def set_delivery(self, row_id: str, delivery: str, error_code: str | None) -> bool:
        """Record the delivery outcome once; False when it was already recorded (a repeat)."""
        result = await transient(
            lambda: self.rows.update_one(
                {"_id": row_id, "delivery": {"$ne": delivery}},
                {"$set": {"delivery": delivery, "delivery_error": error_code}},
            )
        )
        return result.modified_count == 1

    async def opt_out(self, number_key: str, *, at: datetime) -> None:
        """The number texted STOP: nothing more is sent to it."""
        await transient(
            lambda: self.opt_outs.update_one({"_id": number_key}, {"$set": {"at": at}}, upsert=True)
        )

    async def opt_in(self, number_key: str) -> None:
        """The number texted START."""
        await transient(lambda: self.opt_outs.delete_one({"_id": number_key}))

    async def is_opted_out(self, number_key: str) -> bool:
        """True when the number texted STOP and not START since."""
        return await transient(lambda: self.opt_outs.find_one({"_id": number_key})) is not None
