"""The send ledger with its hot path batched: claims and 'sent' records as bulk inserts.

On FerretDB (and MongoDB) one insert_many costs about as much as one single write, so
concurrent senders' claims and outcomes are coalesced for a moment and written together. The
rules are the kit's SendLedger's: a claim is an insert-if-absent on the message id; a 'sent'
outcome is a second row (insert-only, so it can be batched) in `send_outcomes`. Rare paths
(retry, failed, unknown) use the kit's single-document updates.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from herald_kit import Doc, SendLedger

DUPLICATE_KEY = 11000


class _InsertBatcher:
    """Coalesce concurrent insert-if-absent calls into one unordered insert_many."""

    def __init__(self, rows: AsyncCollection[Doc], *, window: float, max_batch: int) -> None:
        self.rows = rows
        self.window = window
        self.max_batch = max_batch
        self._pending: list[tuple[Doc, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def insert(self, doc: Doc) -> bool:
        """True when inserted, False when a row with this _id already exists."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((doc, fut))
        if len(self._pending) >= self.max_batch:
            await self._flush()
        elif self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())
        return await fut

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.window)
        self._flusher = None
        await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        duplicates: set[int] = set()
        try:
            await self.rows.insert_many([doc for doc, _ in batch], ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            others = [e for e in errors if e.get("code") != DUPLICATE_KEY]
            if others:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            duplicates = {int(e["index"]) for e in errors}
        except Exception as exc:  # a database outage: every waiter sees it and retries
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for i, (_, fut) in enumerate(batch):
            if not fut.done():
                fut.set_result(i not in duplicates)


class BatchedLedger(SendLedger):
    """SendLedger whose claims and 'sent' records are written in coalesced batches."""

    def __init__(
        self, db: AsyncDatabase[Doc], *, window: float = 0.003, max_batch: int = 500
    ) -> None:
        super().__init__(db)
        self.outcomes = db["send_outcomes"]
        self._claims = _InsertBatcher(self.rows, window=window, max_batch=max_batch)
        self._sent = _InsertBatcher(self.outcomes, window=window, max_batch=max_batch)

    async def claim(
        self, message_id: str, *, now: datetime, meta: dict[str, Any] | None = None
    ) -> tuple[bool, Doc | None]:
        """(True, None) when this caller may send; (False, row) when a row forbids it."""
        row = {"_id": message_id, "status": "sending", "at": now, **(meta or {})}
        if await self._claims.insert(row):
            return True, None
        outcome = await self.outcomes.find_one({"_id": message_id})
        if outcome is not None:
            return False, outcome
        return await super().claim(message_id, now=now, meta=meta)

    async def set(self, message_id: str, status: str, **fields: object) -> None:
        """'sent' goes to the outcome rows in a batch; every other status updates the claim."""
        if status == "sent":
            await self._sent.insert({"_id": message_id, "status": "sent", **fields})
            return
        await super().set(message_id, status, **fields)

    async def get(self, message_id: str) -> Doc | None:
        """The outcome when there is one, else the claim row."""
        return await self.outcomes.find_one({"_id": message_id}) or await super().get(message_id)
