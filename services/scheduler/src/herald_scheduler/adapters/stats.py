"""Per-campaign, per-channel counters from delivery statuses and replies.

Each count is guarded by a natural key (message and status, reply id, request id) inserted
first, so a redelivered event never counts twice; a crash between the guard and the count
loses that one count rather than doubling it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from herald_contracts import utc_now
from herald_kit import CounterBatcher, Doc, InsertBatcher, RecentKeys

# Messages whose campaign row this process wrote lately (their later statuses need no insert).
RECORDED = 20_000

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def _field(value: str) -> str:
    # Counter names become document keys: no dots, no leading '$' (FerretDB v1 and MongoDB).
    return _SAFE.sub("_", value)[:64] or "unknown"


class StatsRepository:
    """The `stats` counters and their guards."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.stats = db["stats"]
        self.seen = db["stats_seen"]
        self.messages = db["stats_messages"]
        # Statuses of many customers are counted at once: guards and message rows go in as one
        # insert, and a window's increments of one campaign as one update of its counters.
        self._seen = InsertBatcher(self.seen)
        self._messages = InsertBatcher(self.messages)
        self._counts = CounterBatcher(self.stats)
        self._recorded = RecentKeys(RECORDED)

    async def _count(self, campaign_id: str, inc: dict[str, int]) -> None:
        await self._counts.add(campaign_id, inc)

    async def requested(self, campaign_id: str, request_ids: list[str]) -> None:
        """Requests emitted for a campaign (event triggers and timers), once per request id."""
        # One insert_many for the lot (the guards of concurrent callers join it too).
        now = utc_now()
        inserted = await asyncio.gather(
            *(self._seen.insert({"_id": f"req|{r}", "at": now}) for r in request_ids)
        )
        fresh = sum(inserted)
        if fresh:
            await self._count(campaign_id, {"requested": fresh})

    async def requested_batch(self, campaign_id: str, count: int) -> None:
        """Requests of a fan-out batch (already counted once per checkpoint)."""
        if count:
            await self._count(campaign_id, {"requested": count})

    async def status(
        self,
        *,
        campaign_id: str,
        message_id: str,
        channel: str,
        status: str,
        reason: str | None,
    ) -> bool:
        """One status of one message; False when already counted."""
        # The message's campaign, for replies to it (the first status of a message writes it;
        # the later ones of a message this process recorded lately skip the repeated insert).
        if message_id not in self._recorded:
            await self._messages.insert(
                {"_id": message_id, "campaign_id": campaign_id, "channel": channel, "at": utc_now()}
            )
            self._recorded.add(message_id)
        if not await self._seen.insert({"_id": f"st|{message_id}|{status}", "at": utc_now()}):
            return False
        inc = {f"channels.{channel}.{_field(status)}": 1}
        if status in ("failed", "undelivered") and reason:
            inc[f"failed_by_reason.{_field(reason)}"] = 1
        await self._count(campaign_id, inc)
        return True

    async def suppressed(
        self, *, campaign_id: str, request_id: str, channel: str | None, reason: str
    ) -> bool:
        """A contact the dispatcher decided against, once per request; False when counted.

        Per campaign by reason, and per channel when the dispatcher had chosen one (a frequency
        cap, say) — a contact suppressed before any channel was chosen has no channel.
        """
        if not await self._seen.insert({"_id": f"sup|{request_id}", "at": utc_now()}):
            return False
        why = _field(reason)
        inc = {f"suppressed_by_reason.{why}": 1}
        if channel is not None:
            inc[f"channels.{channel}.suppressed"] = 1
            inc[f"channels.{channel}.suppressed_by_reason.{why}"] = 1
        await self._count(campaign_id, inc)
        return True

    async def engaged(self, *, reply_id: str, message_id: str | None, intent: str) -> bool:
        """A reply to a message of ours; False when unattributable or already counted."""
        if message_id is None:
            return False
        msg = await self.messages.find_one({"_id": message_id})
        if msg is None:
            return False
        if not await self._seen.insert({"_id": f"re|{reply_id}", "at": utc_now()}):
            return False
        inc = {
            f"channels.{msg['channel']}.engaged": 1,
            f"replies_by_intent.{_field(intent)}": 1,
        }
        await self._count(msg["campaign_id"], inc)
        return True

    async def get(self, campaign_id: str) -> dict[str, Any]:
        """A campaign's counters (zeros when nothing happened yet)."""
        doc = await self.stats.find_one({"_id": campaign_id}) or {}
        return {
            "campaign_id": campaign_id,
            "requested": doc.get("requested", 0),
            "channels": doc.get("channels", {}),
            "failed_by_reason": doc.get("failed_by_reason", {}),
            "suppressed_by_reason": doc.get("suppressed_by_reason", {}),
            "replies_by_intent": doc.get("replies_by_intent", {}),
        }
