"""Per-campaign send rate: one slot document per campaign, shared by every replica.

A slot is the earliest moment the campaign's next contact request may go out. Reserving one is
a compare-and-set on the campaign's document (addressed by `_id`, so FerretDB v1 looks it up by
index), so replicas matching the same campaign on different partitions share one budget and a
restart forgets nothing. Times are float seconds: a millisecond BSON date cannot space requests
of a campaign paced faster than 1,000/s.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.asynchronous.database import AsyncDatabase

from herald_kit import Doc, RetryableError, insert_if_absent


class SendPace:
    """The `pace` collection: `_id` = campaign id, `next` = the first free slot (epoch s)."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.pace = db["pace"]

    async def reserve(self, campaign_id: str, rate: float, earliest: datetime) -> datetime:
        """The slot for one request no earlier than `earliest`; the next starts 1/rate later."""
        step = 1.0 / rate
        want = earliest.timestamp()
        for _ in range(100):
            doc = await self.pace.find_one({"_id": campaign_id})
            if doc is None:
                if await insert_if_absent(self.pace, {"_id": campaign_id, "next": want + step}):
                    return earliest
                continue
            held = float(doc["next"])
            slot = max(want, held)
            done = await self.pace.update_one(
                {"_id": campaign_id, "next": held}, {"$set": {"next": slot + step}}
            )
            if done.modified_count:
                return datetime.fromtimestamp(slot, UTC)
        raise RetryableError(f"send pace of campaign {campaign_id!r} kept changing")
