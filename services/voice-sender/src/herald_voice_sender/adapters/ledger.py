"""The call ledger: 'sending' before the provider call, 'sent' with the call sid after;
opt-outs said on a call."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from herald_kit import Doc, IdLoader, RetryingSendLedger, transient


def number_key(number: str) -> str:
    """A stable key for a phone number, so an opt-out is found by number without storing it
    plainly (the sms-sender's key)."""
    return hashlib.sha256(number.strip().encode()).hexdigest()


class CallLedger(RetryingSendLedger):
    """One row per message id (a call); its status says whether a call may be placed.

    As the sms-sender's: a claimed row is 'queued' (nothing in flight, so it may be claimed
    again after a crash or a rebalance) until `start_sending()` marks the provider call, which
    only the row's latest claim (its token) may do.
    """

    claim_status = "queued"
    reclaimable = ("retry", "queued")

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        super().__init__(db, "call_ledger")
        self.opt_outs = db["opt_outs"]
        # Concurrent calls' opt-out checks share one read.
        self._opted_out = IdLoader(self.opt_outs)

    async def ensure_indexes(self) -> None:
        """Callbacks find a customer's latest call (its number) for a call-back request; a
        lookup at the provider checks a found call sid is not another row's."""
        await super().ensure_indexes()
        await self.rows.create_index([("customer_id", 1), ("at", DESCENDING)])

    async def opt_out(self, number_key: str, *, at: datetime, customer_id: str) -> None:
        """The callee chose stop on a call (keypad or speech) to `customer_id`: no call already
        handed over is placed to the number any more (see `VoiceCalling.stopped`).

        The number keeps its latest stop (`at`) and the customers that stop was said for
        (`customers`): a newer stop starts the list again, as preferences heard it only for
        its own customer, and must hear it for one who stopped before and consented again
        when a call to them is refused. An older stop arriving late changes nothing."""
        await transient(lambda: self._opt_out(number_key, at=at, customer_id=customer_id))

    async def _opt_out(self, number_key: str, *, at: datetime, customer_id: str) -> None:
        # Plain conditional updates and an insert (FerretDB has no update pipelines); each step
        # is idempotent, so a retried write does no harm.
        for _ in range(3):
            newer = await self.opt_outs.update_one(
                {"_id": number_key, "at": {"$lt": at}},
                {"$set": {"at": at, "customers": [customer_id]}},
            )
            if newer.matched_count:
                return
            same = await self.opt_outs.update_one(
                {"_id": number_key, "at": at}, {"$addToSet": {"customers": customer_id}}
            )
            if same.matched_count:
                return
            if await self.opt_outs.find_one({"_id": number_key, "at": {"$gt": at}}, {"_id": 1}):
                return
            try:
                await self.opt_outs.insert_one(
                    {"_id": number_key, "at": at, "customers": [customer_id]}
                )
                return
            except DuplicateKeyError:
                continue  # a stop recorded meanwhile: compare with it

    async def stop_of(self, number_key: str) -> Doc | None:
        """The number's stop: when it was last chosen (`at`, UTC-aware) and on calls to which
        customers (`customers`, whom preferences heard it for); None without one."""
        row = await transient(lambda: self._opted_out.get(number_key))
        if row is not None and row["at"].tzinfo is None:
            # A client without tz_aware returns naive UTC.
            row = {**row, "at": row["at"].replace(tzinfo=UTC)}
        return row
