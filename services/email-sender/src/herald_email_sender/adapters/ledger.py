"""The send ledger with its hot path batched: claims, 'sending' marks and 'sent' records.

On FerretDB (and MongoDB) one insert_many or bulk_write costs about as much as one single
write, so concurrent senders' ledger writes are coalesced for a moment and written together.

A message's row goes through:
- 'queued': claimed (an insert-if-absent on the message id) with a claim token; the message
  waits for a relay connection and the pacer, and nothing has been handed to the relay, so a
  row found 'queued' after a crash is claimed again and sent.
- 'sending': set by `start_sending` just before the SMTP transaction, only if the row is still
  this claim's (a redelivery after a rebalance may have claimed it again meanwhile). From here
  a crash leaves the outcome unknown: such a row is reported 'unknown', never resent.
- 'retry': the relay refused with a passing error (nothing went out); claimed again.
- 'sent' (a second, insert-only row in `send_outcomes`, so it can be batched), 'failed',
  'unknown': final.

The claim row also keeps a hash of the recipient's address (`address_key`): an unsubscribe
names the message its link came with, and is kept by that address (`opt_outs`) so the emails
to it still waiting are not sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from herald_contracts import utc_now
from herald_kit import Coalescer, Doc, IdLoader, InsertBatcher, SendLedger, transient


class BatchedLedger(SendLedger):
    """SendLedger whose claims, 'sending' marks and 'sent' records are written in batches."""

    claim_status = "queued"
    reclaimable = ("queued", "retry")

    def __init__(
        self, db: AsyncDatabase[Doc], *, window: float = 0.003, max_batch: int = 500
    ) -> None:
        super().__init__(db)
        self.outcomes = db["send_outcomes"]
        self._claims = InsertBatcher(self.rows, window=window, max_batch=max_batch)
        self._sent = InsertBatcher(self.outcomes, window=window, max_batch=max_batch)
        self._starts: Coalescer[tuple[str, str, datetime], bool] = Coalescer(
            self._start_batch, window=window, max_batch=max_batch
        )
        self.opt_outs = db["opt_outs"]
        # Concurrent sends' unsubscribe checks share one read.
        self._unsubscribes = IdLoader(self.opt_outs, window=window, max_batch=max_batch)

    async def claim(
        self, message_id: str, *, now: datetime, meta: dict[str, Any] | None = None
    ) -> tuple[bool, Doc | None]:
        """(True, None) when this caller may send; (False, row) when a row forbids it.

        `meta` should carry this claim's token (`claim`) for `start_sending`.
        """
        row = {"_id": message_id, "status": self.claim_status, "at": now, **(meta or {})}
        if await self._claims.insert(row):
            return True, None
        outcome = await self.outcomes.find_one({"_id": message_id})
        if outcome is not None:
            return False, outcome
        claimed = await self.rows.find_one_and_update(
            {"_id": message_id, "status": {"$in": list(self.reclaimable)}},
            {"$set": {"status": self.claim_status, "at": now, **(meta or {})}},
            return_document=ReturnDocument.AFTER,
        )
        if claimed is not None:
            return True, None
        return False, await self.rows.find_one({"_id": message_id})

    async def set(self, message_id: str, status: str, **fields: object) -> None:
        """'sent' goes to the outcome rows in a batch; every other status updates the claim."""
        if status == "sent":
            row = {"_id": message_id, "status": "sent", "at": utc_now(), **fields}
            await self._sent.insert(row)
            return
        await super().set(message_id, status, **fields)

    async def get(self, message_id: str) -> Doc | None:
        """The outcome when there is one, else the claim row."""
        return await self.outcomes.find_one({"_id": message_id}) or await super().get(message_id)

    async def unsubscribe(
        self, message_id: str, *, customer_id: str, topic: str | None, at: datetime
    ) -> bool:
        """The recipient of this message (to `customer_id`) unsubscribed: from `topic`, or from
        every email when None. Kept by the message's address key, with the customers it was
        said for (`customers`: preferences heard it for them); False when the message's row is
        gone (past the ledger retention) or predates the key, so the address is not known.

        `customers` are those the latest unsubscribe (`at`) was said for: a newer one starts
        the list again, as preferences heard it only for its own customer, and must hear it for
        one who unsubscribed before (and subscribed again) when an email to them is refused."""
        row = await transient(lambda: self.rows.find_one({"_id": message_id}, {"address_key": 1}))
        key = row.get("address_key") if row is not None else None
        if not key:
            return False
        await transient(lambda: self._unsubscribe(key, customer_id=customer_id, topic=topic, at=at))
        return True

    async def _unsubscribe(
        self, key: str, *, customer_id: str, topic: str | None, at: datetime
    ) -> None:
        # Plain conditional updates and an insert (FerretDB has no update pipelines); each step
        # is idempotent, so a retried write does no harm.
        withdrawn = f"topics.{topic}" if topic is not None else "all"
        for _ in range(3):
            newer = await self.opt_outs.update_one(
                {"_id": key, "at": {"$lt": at}},
                {"$set": {"at": at, withdrawn: at, "customers": [customer_id]}},
            )
            if newer.matched_count:
                return
            same = await self.opt_outs.update_one(
                {"_id": key, "at": at},
                {"$set": {withdrawn: at}, "$addToSet": {"customers": customer_id}},
            )
            if same.matched_count:
                return
            # An older unsubscribe arriving late still withdraws what it names; the latest
            # stays the one `customers` speak of.
            older = await self.opt_outs.update_one(
                {"_id": key, "at": {"$gt": at}}, {"$max": {withdrawn: at}}
            )
            if older.matched_count:
                return
            fields = {"all": at} if topic is None else {"topics": {topic: at}}
            try:
                await self.opt_outs.insert_one(
                    {"_id": key, "at": at, "customers": [customer_id], **fields}
                )
                return
            except DuplicateKeyError:
                continue  # an unsubscribe recorded meanwhile: compare with it

    async def unsubscribes(self, address_key: str) -> Doc | None:
        """What the address unsubscribed from, and when: `all` (every email) and `topics`."""
        return await transient(lambda: self._unsubscribes.get(address_key))
