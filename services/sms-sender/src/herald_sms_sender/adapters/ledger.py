"""The send ledger: 'sending' before the provider call, 'sent' with its id after; opt-outs."""

from __future__ import annotations

from datetime import datetime

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from herald_kit import Doc, IdLoader, RetryingSendLedger, transient

# The statuses of a row whose message the provider took or may have taken. Delivery is
# recorded beside the status (`reported.delivered`); 'delivered' is kept for any row that
# carries it as its status. Not 'sending': the provider call is in flight and may yet be
# refused, and a customer cannot answer a text they do not have yet.
MAY_HAVE_REACHED = ("sent", "delivered", "unknown")


class Ledger(RetryingSendLedger):
    """One row per message id; the row's status says whether a send may happen.

    A claimed row is 'queued' (nothing in flight) until `start_sending()` marks the provider
    call. A row in 'queued' or 'retry' (the provider refused with a retryable answer, so
    nothing went out) may be claimed again, e.g. after a crash while waiting for the pacer, or
    by the consumer a rebalance gave the partition to: each claim carries its own token, and
    only the row's latest claim may turn it 'sending', so the earlier claimant sends nothing.
    """

    claim_status = "queued"
    reclaimable = ("retry", "queued")

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        super().__init__(db, "send_ledger")
        self.opt_outs = db["opt_outs"]
        # Concurrent sends' opt-out checks share one read.
        self._opted_out = IdLoader(self.opt_outs)

    async def ensure_indexes(self) -> None:
        """Callbacks look rows up by the provider's id; replies by the number they came from."""
        await super().ensure_indexes()
        await self.rows.create_index([("number_key", 1), ("at", DESCENDING)])

    async def last_to(self, number_key: str) -> Doc | None:
        """The latest message that reached, or may have reached, a number: what an inbound
        reply most likely answers.

        Any row the provider may have taken counts: 'sent', 'unknown' (the answer was lost, and
        Twilio may well have sent it; a reply is the proof it did), and any row with the
        provider's id or a delivery callback. Rows that never went out are passed over
        ('queued', 'retry', 'failed' before the provider took them), or a reply would be
        credited to an older message, or to none; and so is a 'sending' row, whose call is still
        in flight (the reply that arrives meanwhile answers an earlier text, and the call may
        yet be refused). A call cut short by a crash is settled ('sent' or 'unknown') when the
        message is read again after the restart.
        """
        return await transient(
            lambda: self.rows.find_one(
                {
                    "number_key": number_key,
                    "$or": [
                        {"status": {"$in": list(MAY_HAVE_REACHED)}},
                        {"provider_id": {"$exists": True}},
                        {"reported.delivered": {"$exists": True}},
                    ],
                },
                sort=[("at", DESCENDING)],
            )
        )

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
        return await transient(lambda: self._opted_out.get(number_key)) is not None
