"""Per-campaign, per-channel counters from delivery statuses and replies.

Each count is guarded by a natural key (message and status, reply id, request id) inserted
first, so a redelivered event never counts twice; a crash between the guard and the count
loses that one count rather than doubling it. A count the database refuses (an outage, a busy
database: the consumer retries the event) takes its guards back first, so the retry counts it.
The count records its guard keys in the counter document in the same update, so a count the
database applied but whose answer was lost is not applied again by that retry; a record goes
with a later update, at the latest once older than the guards' retention.

A reply is attributed to its message's campaign and channel through the row the message's first
status writes (`stats_messages`). A reply read before that status (delivery.status.v1 and
engagement.replies.v1 are read independently, and the status topic may lag) is parked under its
message id (`stats_parked`) and counted when the first status writes the row.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from herald_contracts import utc_now
from herald_kit import OPS_KEPT, CounterBatcher, Doc, IdLoader, InsertBatcher, RecentKeys

# Messages whose campaign row this process wrote lately (their later statuses need no insert).
RECORDED = 20_000
# Guards whose count failed and could not be taken back, kept for the consumer's retry.
OWED = 10_000
# Statuses whose reason is counted in `failed_by_reason`.
FAILURES = frozenset({"failed", "undelivered"})

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def _field(value: str) -> str:
    # Counter names become document keys: no dots, no leading '$' (FerretDB v1 and MongoDB).
    return _SAFE.sub("_", value)[:64] or "unknown"


class StatsRepository:
    """The `stats` counters and their guards."""

    def __init__(self, db: AsyncDatabase[Doc], *, guards_kept: timedelta = OPS_KEPT) -> None:
        self.stats = db["stats"]
        self.seen = db["stats_seen"]
        self.messages = db["stats_messages"]
        self.parked = db["stats_parked"]
        # Statuses of many customers are counted at once: guards and message rows go in as one
        # insert, and a window's increments of one campaign as one update of its counters.
        self._seen = InsertBatcher(self.seen)
        self._messages = InsertBatcher(self.messages)
        self._parked = IdLoader(self.parked)
        # A count's record of its guard key is kept no longer than the guard itself.
        self._counts = CounterBatcher(self.stats, ops_kept=guards_kept)
        self._recorded = RecentKeys(RECORDED)
        self._owed: OrderedDict[str, None] = OrderedDict()

    async def _count_once(self, campaign_id: str, keys: Sequence[str], inc: dict[str, int]) -> int:
        """Add `inc` to the campaign once per guard key not counted before; how many were new.

        The guards go in first, so a redelivered event counts nothing. When the count then
        fails, its guards are deleted before the error goes on to the consumer, whose retry
        (here or on the replica the partition moves to) inserts them again and counts. Should
        the database refuse the delete too (an outage does), the guards are owed: this
        replica's retry counts them although they are there. Each guard key names its count's
        operation in the counter document (CounterBatcher), so a count that the database
        applied but whose answer was lost is not applied again by the retry.
        """
        now = utc_now()
        inserted = await asyncio.gather(*(self._seen.insert({"_id": k, "at": now}) for k in keys))
        fresh = [k for k, new in zip(keys, inserted, strict=True) if new or k in self._owed]
        if not fresh:
            return 0
        n = len(fresh)
        try:
            # One operation per guard key (a retry may find some of them counted already); the
            # batcher merges them into one update of the campaign's counters.
            counted = await asyncio.gather(
                *(self._counts.add(campaign_id, inc, op=k) for k in fresh), return_exceptions=True
            )
            for outcome in counted:
                if isinstance(outcome, BaseException):
                    raise outcome
        except Exception:
            try:
                await self.seen.delete_many({"_id": {"$in": fresh}})
            except Exception:
                for k in fresh:
                    self._owed[k] = None
                while len(self._owed) > OWED:
                    self._owed.popitem(last=False)
            else:
                for k in fresh:
                    self._owed.pop(k, None)
            raise
        for k in fresh:
            self._owed.pop(k, None)
        return n

    async def requested(self, campaign_id: str, request_ids: list[str]) -> None:
        """Requests emitted for a campaign (event triggers and timers), once per request id."""
        # One insert_many for the lot (the guards of concurrent callers join it too).
        await self._count_once(campaign_id, [f"req|{r}" for r in request_ids], {"requested": 1})

    async def requested_batch(
        self,
        campaign_id: str,
        count: int,
        *,
        audience_errors: int = 0,
        op: str | None = None,
        previous: str | None = None,
    ) -> None:
        """Requests of a fan-out batch (already counted once per checkpoint), and its customers
        the audience filter could not be evaluated for.

        `op` names the checkpoint: counted once however often it is applied (a resumed fan-out
        applies its last checkpoint's counts again, not knowing whether they were). Its record
        stays in the counters until the next checkpoint's count removes it (`previous`).
        """
        counts = {"requested": count, "audience_errors": audience_errors}
        counts = {k: n for k, n in counts.items() if n}
        if counts or previous:
            await self._counts.add(
                campaign_id,
                counts,
                op=op if counts else None,
                keep=True,
                forget=[previous] if previous else [],
            )

    async def status(
        self,
        *,
        campaign_id: str,
        message_id: str,
        channel: str | None,
        status: str,
        reason: str | None,
    ) -> bool:
        """One status of one message; False when already counted.

        Without a channel (the dispatcher failed a contact before it chose one), only the
        failure's reason is counted, and there is no message for replies to answer.
        """
        # The message's campaign, for replies to it (the first status of a message writes it;
        # the later ones of a message this process recorded lately skip the repeated insert).
        if channel is not None and message_id not in self._recorded:
            await self._messages.insert(
                {"_id": message_id, "campaign_id": campaign_id, "channel": channel, "at": utc_now()}
            )
            # Replies read before this status: counted now that their message is known. Read
            # whether or not the row was new: a crash may have come between the two.
            await self._count_parked(campaign_id, channel, message_id)
            self._recorded.add(message_id)
        inc: dict[str, int] = {}
        if channel is not None:
            inc[f"channels.{channel}.{_field(status)}"] = 1
        if status in FAILURES and reason:
            inc[f"failed_by_reason.{_field(reason)}"] = 1
        if not inc:
            return False
        return bool(await self._count_once(campaign_id, [f"st|{message_id}|{status}"], inc))

    async def callback(
        self, *, campaign_id: str, message_id: str, status: str, reason: str | None
    ) -> bool:
        """One status of a call-back call the customer asked for in answer to the campaign;
        False when already counted. Kept apart from the campaign's own channels: the campaign
        did not choose to call."""
        inc = {f"callbacks.{_field(status)}": 1}
        if status in FAILURES and reason:
            inc[f"callbacks.failed_by_reason.{_field(reason)}"] = 1
        return bool(await self._count_once(campaign_id, [f"st|{message_id}|{status}"], inc))

    async def suppressed(
        self, *, campaign_id: str, request_id: str, channel: str | None, reason: str
    ) -> bool:
        """A contact the dispatcher decided against, once per request; False when counted.

        Per campaign by reason, and per channel when the dispatcher had chosen one (a frequency
        cap, say) — a contact suppressed before any channel was chosen has no channel.
        """
        why = _field(reason)
        inc = {f"suppressed_by_reason.{why}": 1}
        if channel is not None:
            inc[f"channels.{channel}.suppressed"] = 1
            inc[f"channels.{channel}.suppressed_by_reason.{why}"] = 1
        return bool(await self._count_once(campaign_id, [f"sup|{request_id}"], inc))

    async def engaged(self, *, reply_id: str, message_id: str | None, intent: str) -> bool:
        """A reply to a message of ours; False when unattributable (yet) or already counted.

        A reply to a message whose first status has not been read is parked under the message
        and counted by that status (`status`). The row is read again after parking: a status
        that wrote it meanwhile may have looked for parked replies before this one was there.
        Both may then count it; its guard lets one through.
        """
        if message_id is None:
            return False
        msg = await self.messages.find_one({"_id": message_id})
        if msg is None:
            await self.parked.update_one(
                {"_id": message_id},
                {
                    "$addToSet": {"replies": {"id": reply_id, "intent": intent}},
                    "$setOnInsert": {"at": utc_now()},
                },
                upsert=True,
            )
            msg = await self.messages.find_one({"_id": message_id})
            if msg is None:
                return False
        return await self._count_reply(msg["campaign_id"], msg["channel"], reply_id, intent)

    async def _count_reply(
        self, campaign_id: str, channel: str, reply_id: str, intent: str
    ) -> bool:
        inc = {f"channels.{channel}.engaged": 1, f"replies_by_intent.{_field(intent)}": 1}
        return bool(await self._count_once(campaign_id, [f"re|{reply_id}"], inc))

    async def _count_parked(self, campaign_id: str, channel: str, message_id: str) -> None:
        parked = await self._parked.get(message_id)
        for reply in (parked or {}).get("replies", []):
            await self._count_reply(campaign_id, channel, reply["id"], reply["intent"])

    async def get(self, campaign_id: str) -> dict[str, Any]:
        """A campaign's counters (zeros when nothing happened yet)."""
        # Not the records of the counts' guard keys (`ops`): nothing here, and many of them.
        doc = await self.stats.find_one({"_id": campaign_id}, {"ops": 0}) or {}
        return {
            "campaign_id": campaign_id,
            "requested": doc.get("requested", 0),
            "audience_errors": doc.get("audience_errors", 0),
            "channels": doc.get("channels", {}),
            "failed_by_reason": doc.get("failed_by_reason", {}),
            "suppressed_by_reason": doc.get("suppressed_by_reason", {}),
            "replies_by_intent": doc.get("replies_by_intent", {}),
            "callbacks": doc.get("callbacks", {}),
        }
