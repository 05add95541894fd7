"""The senders' send ledger: 'sending' before the provider call, 'sent' with its id after.

Shared by every channel sender so that "never send twice" is implemented once: a row per
message id, created with an insert-if-absent on the primary key (no transactions needed).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, OperationFailure

from herald_kit._batching import Coalescer, IdLoader, InsertBatcher, UpdateBatcher
from herald_kit._mongo import Doc

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


class SendLedger:
    """One row per message id; the row's status says whether a send may happen.

    Statuses: 'sending' (claimed, the provider may have been called), 'retry' (the provider
    refused with a passing error, so nothing went out), 'sent', 'failed', 'unknown'.
    A subclass may claim rows in another status (`claim_status`) and let more statuses be
    claimed again (`reclaimable`).

    When the claimed row waits before the provider call (a 'queued' claim, the pacer, a retry
    pause), the message's partition may move to another consumer meanwhile, which claims the
    row again and sends. So each claim writes a token (`meta={"claim": token}`), and the
    waiting claimant turns the row 'sending' only through `start_sending` with its token: one
    of them wins, the other sends nothing.
    """

    claim_status: str = "sending"
    reclaimable: tuple[str, ...] = ("retry",)

    def __init__(self, db: AsyncDatabase[Doc], collection: str = "send_ledger") -> None:
        self.rows = db[collection]
        # The hot path (claim, sending, sent) of concurrent sends, coalesced into one command.
        self._inserts = InsertBatcher(self.rows)
        self._updates = UpdateBatcher(self.rows)
        self._starts: Coalescer[tuple[str, str, datetime], bool] = Coalescer(
            self._start_batch, window=0.002, max_batch=200
        )
        # Status callbacks arrive by the hundred a second: their reads by _id go together, and
        # so do the records of what they reported.
        self._rows = IdLoader(self.rows)
        self._reports: Coalescer[tuple[str, str, str], bool] = Coalescer(
            self._report_batch, window=0.002, max_batch=200
        )

    async def _run(self, op: Callable[[], Awaitable[T]]) -> T:
        """How a single-document operation is run (once, here)."""
        return await op()

    async def ensure_indexes(self) -> None:
        """Callbacks look rows up by the provider's id."""
        await self.rows.create_index("provider_id", sparse=True)

    async def claim(
        self, message_id: str, *, now: datetime, meta: dict[str, Any] | None = None
    ) -> tuple[bool, Doc | None]:
        """(True, None) when this caller may send; (False, row) when the row forbids it.

        A row in a reclaimable status ('retry': the provider said nothing went out) may be
        claimed again; `meta` (with this claim's token, `claim`) is written either way.
        """
        return await self._claim(message_id, {"status": self.claim_status, "at": now}, meta)

    async def claim_sending(
        self, message_id: str, *, now: datetime, meta: dict[str, Any] | None = None
    ) -> tuple[bool, Doc | None]:
        """`claim` that marks the row 'sending' at once, for a caller that calls the provider
        next with no wait in between: one write instead of a claim and `sending()`."""
        status = {"status": "sending", "at": now, "sending_at": now}
        return await self._claim(message_id, status, meta)

    async def _claim(
        self, message_id: str, status: Doc, meta: dict[str, Any] | None
    ) -> tuple[bool, Doc | None]:
        row = {"_id": message_id, **status, **(meta or {})}
        if await self._run(lambda: self._inserts.insert(row)):
            return True, None
        again: object = (
            self.reclaimable[0] if len(self.reclaimable) == 1 else {"$in": list(self.reclaimable)}
        )
        claimed = await self._run(
            lambda: self.rows.find_one_and_update(
                {"_id": message_id, "status": again},
                {"$set": {**status, **(meta or {})}},
                return_document=ReturnDocument.AFTER,
            )
        )
        if claimed is not None:
            return True, None
        return False, await self._run(lambda: self.rows.find_one({"_id": message_id}))

    async def set(self, message_id: str, status: str, **fields: object) -> None:
        """Record a status (and provider id, error code...)."""
        await self._run(
            lambda: self._updates.update(
                {"_id": message_id}, {"$set": {"status": status, **fields}}
            )
        )

    async def start_sending(self, message_id: str, *, claim: str, now: datetime) -> bool:
        """'queued' → 'sending' just before the provider call, only if the row is still this
        claim's; False when another consumer claimed it again meanwhile: do not send then.

        From 'sending' a crash leaves the outcome unknown (for a ledger that claims rows in
        another status, e.g. 'queued')."""
        return await self._run(lambda: self._starts.call((message_id, claim, now)))

    async def _start_batch(
        self, items: list[tuple[str, str, datetime]]
    ) -> list[bool | BaseException]:
        ops = [
            UpdateOne(
                {"_id": mid, "status": self.claim_status, "claim": claim},
                {"$set": {"status": "sending", "sending_at": now}},
            )
            for mid, claim, now in items
        ]
        result = await self.rows.bulk_write(ops, ordered=False)
        if result.matched_count == len(ops):
            return [True for _ in ops]
        # Some row was claimed again by someone else (or this is a retry of a batch already
        # written): look which rows are 'sending' under our claims.
        ours = {
            (row["_id"], row.get("claim"))
            async for row in self.rows.find(
                {"_id": {"$in": [mid for mid, _, _ in items]}, "status": "sending"},
                {"claim": 1},
            )
        }
        return [(mid, claim) in ours for mid, claim, _ in items]

    async def first_report(self, message_id: str, status: str) -> bool:
        """Record that a provider's callback reported `status` for the message: True the first
        time, False when the row holds it already (the provider retried its callback).

        The record is this call's own token, written only where the status is not recorded
        yet: a retry of a write whose answer was lost finds its own token there and is still
        the first, while a row recorded by any other call (or by a version that wrote `True`)
        is not."""
        token = uuid.uuid4().hex
        return await self._run(lambda: self._reports.call((message_id, status, token)))

    async def _report_batch(self, items: list[tuple[str, str, str]]) -> list[bool | BaseException]:
        ops = [
            UpdateOne(
                {"_id": mid, f"reported.{status}": {"$exists": False}},
                {"$set": {f"reported.{status}": token}},
            )
            for mid, status, token in items
        ]
        result = await self.rows.bulk_write(ops, ordered=False)
        if result.modified_count == len(ops):
            return [True for _ in ops]
        # Some status was recorded already (a repeated callback, in this batch or before) or
        # its row is gone: the token each row holds tells which calls recorded theirs.
        held = {
            row["_id"]: row.get("reported") or {}
            async for row in self.rows.find(
                {"_id": {"$in": list({mid for mid, _, _ in items})}}, {"reported": 1}
            )
        }
        return [held.get(mid, {}).get(status) == token for mid, status, token in items]

    async def get(self, message_id: str) -> Doc | None:
        """The row of a message id."""
        return await self._run(lambda: self._rows.get(message_id))

    async def by_provider_id(self, provider_id: str) -> Doc | None:
        """The row of a provider's message id."""
        return await self._run(lambda: self.rows.find_one({"provider_id": provider_id}))


class RetryingSendLedger(SendLedger):
    """A SendLedger whose every operation retries momentary database refusals (`transient`)."""

    async def _run(self, op: Callable[[], Awaitable[T]]) -> T:
        return await transient(op)
