"""The call ledger: 'sending' before the provider call, 'sent' with the call sid after."""

from __future__ import annotations

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from herald_kit import Doc, RetryingSendLedger


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

    async def ensure_indexes(self) -> None:
        """Callbacks find a customer's latest call (its number) for a call-back request; a
        lookup at the provider checks a found call sid is not another row's."""
        await super().ensure_indexes()
        await self.rows.create_index([("customer_id", 1), ("at", DESCENDING)])
