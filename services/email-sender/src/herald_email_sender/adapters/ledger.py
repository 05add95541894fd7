"""The send ledger with its hot path batched: claims and 'sent' records as bulk inserts.

On FerretDB (and MongoDB) one insert_many costs about as much as one single write, so
concurrent senders' claims and outcomes are coalesced for a moment and written together. The
rules are the kit's SendLedger's: a claim is an insert-if-absent on the message id; a 'sent'
outcome is a second row (insert-only, so it can be batched) in `send_outcomes`. Rare paths
(retry, failed, unknown) use the kit's single-document updates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from herald_kit import Doc, InsertBatcher, SendLedger


class BatchedLedger(SendLedger):
    """SendLedger whose claims and 'sent' records are written in coalesced batches."""

    def __init__(
        self, db: AsyncDatabase[Doc], *, window: float = 0.003, max_batch: int = 500
    ) -> None:
        super().__init__(db)
        self.outcomes = db["send_outcomes"]
        self._claims = InsertBatcher(self.rows, window=window, max_batch=max_batch)
        self._sent = InsertBatcher(self.outcomes, window=window, max_batch=max_batch)

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
