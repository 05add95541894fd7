"""The scheduler's own view of contacts.preferences.v1 and its audience fires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from herald_kit import Doc, insert_if_absent

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ContactView:
    """Latest preference snapshot per customer, never regressing to an older version."""

    def __init__(self, db: AsyncDatabase[Doc], *, dry_run_limit: int = 500) -> None:
        self.contacts = db["contacts"]
        self.dry_run_limit = dry_run_limit

    async def upsert(self, snapshot: dict[str, Any]) -> bool:
        """Keep the snapshot if it is newer than what the view holds."""
        cid, version = snapshot["customer_id"], snapshot["version"]
        if await insert_if_absent(self.contacts, {"_id": cid, "version": version, "p": snapshot}):
            return True
        result = await self.contacts.update_one(
            {"_id": cid, "version": {"$lt": version}},
            {"$set": {"version": version, "p": snapshot}},
        )
        return bool(result.modified_count)

    async def erase(self, customer_id: str) -> None:
        """A tombstone: the customer is gone."""
        await self.contacts.delete_one({"_id": customer_id})

    async def page(self, *, after: str, limit: int) -> list[Doc]:
        """Customers in id order after `after` (the fan-out checkpoint)."""
        cursor = self.contacts.find({"_id": {"$gt": after}}).sort("_id", 1).limit(limit)
        return [d async for d in cursor]

    async def get_many(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Snapshots of some customers."""
        return {d["_id"]: d["p"] async for d in self.contacts.find({"_id": {"$in": ids}})}


DUE_COLLECTION = "fires_due"


def mark_due(due: Collection[Doc], fire_id: str, campaign_id: str, scheduled: datetime) -> None:
    """Note a fire APScheduler hands over, before its job store moves past that time (sync:
    APScheduler's executor hook is). Marked twice (a replay), it stays one marker."""
    try:
        due.insert_one({"_id": fire_id, "campaign_id": campaign_id, "scheduled": scheduled})
    except DuplicateKeyError:
        pass


class FireRepository:
    """One row per (campaign, scheduled time): the double-fire guard and the fan-out checkpoint.

    Beside the rows, `fires_due` holds a marker per fire handed over but not yet recorded: what
    a replica killed in between leaves for the next leader to fire.
    """

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.fires = db["fires"]
        self.due = db[DUE_COLLECTION]

    async def ensure_indexes(self) -> None:
        """Unfinished fires are resumed on takeover."""
        await self.fires.create_index([("done", ASCENDING)])

    async def begin(self, row: Doc) -> bool:
        """Record a fire; False when this campaign already fired at this scheduled time."""
        return await insert_if_absent(
            self.fires, {**row, "cp_part": 0, "cp_off": 0, "requested": 0, "audience_errors": 0}
        )

    async def due_markers(self) -> list[Doc]:
        """Fires handed over by APScheduler whose outcome is not settled yet."""
        return [d async for d in self.due.find({})]

    async def settled(self, fire_id: str) -> None:
        """The fire is recorded (or was not to happen): its marker goes."""
        await self.due.delete_one({"_id": fire_id})

    async def unfinished(self) -> list[Doc]:
        """Fires whose fan-out has not completed."""
        return [d async for d in self.fires.find({"done": False})]

    async def advance(
        self,
        fire_id: str,
        *,
        old: tuple[int, int],
        new: tuple[int, int],
        count: int,
        audience_errors: int = 0,
        stats: Doc | None = None,
    ) -> bool:
        """Move the (partition, offset) checkpoint past a published batch; False when another
        worker moved it first. `audience_errors`: the batch's customers the audience filter
        could not be evaluated for (not contacted). `stats`: the batch's campaign stats count,
        kept with the checkpoint until the next one (`stats_owed`), so a resume applies it
        again should the fan-out have stopped before it was (see FanOut)."""
        change: Doc = {"cp_part": new[0], "cp_off": new[1]}
        if stats is not None:
            change["stats_owed"] = stats
        result = await self.fires.update_one(
            {"_id": fire_id, "cp_part": old[0], "cp_off": old[1]},
            {
                "$set": change,
                "$inc": {"requested": count, "audience_errors": audience_errors},
            },
        )
        return bool(result.modified_count)

    async def finish(self, fire_id: str, *, now: datetime, outcome: str = "completed") -> None:
        """The fire is over: its audience exhausted, or the campaign halted it."""
        await self.fires.update_one(
            {"_id": fire_id}, {"$set": {"done": True, "done_at": now, "outcome": outcome}}
        )

    async def get(self, fire_id: str) -> Doc | None:
        """One fire row."""
        return await self.fires.find_one({"_id": fire_id})


class Lease:
    """A lease document: one holder at a time; anyone takes over once it is not renewed."""

    def __init__(self, db: AsyncDatabase[Doc], name: str, holder: str, ttl: timedelta) -> None:
        self.leases = db["leases"]
        self.name = name
        self.holder = holder
        self.ttl = ttl

    async def acquire(self, *, now: datetime) -> bool:
        """Take or renew the lease; False while another holder's lease is live."""
        try:
            doc = await self.leases.find_one_and_update(
                {"_id": self.name, "$or": [{"holder": self.holder}, {"until": {"$lte": now}}]},
                {"$set": {"holder": self.holder, "until": now + self.ttl}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # someone else holds it: the upsert collided with their document
        return doc is not None and doc["holder"] == self.holder

    async def release(self) -> None:
        """Give the lease up at once so a standby takes over without waiting for the ttl."""
        await self.leases.update_one(
            {"_id": self.name, "holder": self.holder}, {"$set": {"until": EPOCH}}
        )
