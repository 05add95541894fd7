"""Durable timers: rows with a due time, claimed atomically by any replica, fired once.

No TTL indexes or change streams on FerretDB v1, so replicas poll for due rows and claim each
with a conditional findOneAndUpdate by `_id`; a claim is a lease, so a replica that dies
mid-fire leaves a row that another replica fires after the lease (with the same request id,
which the dispatcher dedupes).

FerretDB v1 serves only `_id` filters from an index (docs/architecture.md): any other filter
reads the whole collection. So one query finds a batch of due rows and each is claimed by
`_id`, rather than a sorted findOneAndUpdate (a full read) per row; and cancellation by key
reads `timer_keys` (key -> timer ids) by `_id` instead of updating by `key`.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from herald_kit import Doc, InsertBatcher, forget_before, insert_if_absent

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TimerRepository:
    """The `timers` collection."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.timers = db["timers"]
        self.keys = db["timer_keys"]
        self.migrations = db["migrations"]
        self._new_keys = InsertBatcher(self.keys)

    async def ensure_indexes(self) -> None:
        """Due rows by time; cancellation by key."""
        await self.timers.create_index([("state", ASCENDING), ("due_at", ASCENDING)])
        await self.timers.create_index([("key", ASCENDING)])
        await self.keys.create_index([("due", ASCENDING)])

    async def schedule(
        self,
        *,
        timer_id: str,
        key: str,
        due_at: datetime,
        request: dict[str, Any] | None,
        now: datetime,
        kind: str = "timer",
        reply: dict[str, Any] | None = None,
        traceparent: str | None = None,
    ) -> bool:
        """A new pending timer that re-sends a request (or re-publishes a reply); False when
        this timer id exists already (a replayed request).

        A timer id that exists, still pending, and is asked for at an earlier time is moved to
        it: the dispatcher's escalation timer, asked for again due now when its message fails
        (the one timer fires, at once; a later request for it changes nothing).

        `timer`: a dispatcher's timer, re-sending a request already counted; `delay`: the
        scheduler's own delayed (or paced) request, counted as requested when it fires.
        `traceparent`: the trace it was asked for in, which its firing goes on in.
        """
        row: dict[str, Any] = {
            "_id": timer_id,
            "kind": kind,
            "key": key,
            "state": "pending",
            "due_at": due_at,
            "claimed_until": EPOCH,
            "request": request,
            "created_at": now,
        }
        if reply is not None:
            row["reply"] = reply
        if traceparent is not None:
            row["traceparent"] = traceparent
        # The key first: a crash in between leaves a key naming no row, never a row that a
        # cancel cannot find.
        cancelled_at = await self._index_key(key, timer_id, due_at)
        if cancelled_at is not None:
            # Its cancel came first (a tombstone): the timer starts out cancelled.
            row["state"] = "cancelled"
            row["cancelled_at"] = cancelled_at
        if await insert_if_absent(self.timers, row):
            return True
        await self.timers.update_one(
            {"_id": timer_id, "state": "pending", "due_at": {"$gt": due_at}},
            {"$set": {"due_at": due_at}},
        )
        return False

    async def index_pending_keys(self) -> int:
        """Once per database: name every pending timer under its key (rows written before
        `timer_keys` existed); how many rows were read. Later rows are named when scheduled,
        so a restart reads nothing; a crash midway repeats it, harmlessly."""
        if await self.migrations.find_one({"_id": "timer_keys"}) is not None:
            return 0
        rows = [r async for r in self.timers.find({"state": "pending"}, {"key": 1, "due_at": 1})]
        await asyncio.gather(
            *(self._index_key(r["key"], r["_id"], r["due_at"]) for r in rows if "key" in r)
        )
        await insert_if_absent(self.migrations, {"_id": "timer_keys"})
        return len(rows)

    async def _index_key(self, key: str, timer_id: str, due_at: datetime) -> datetime | None:
        """Name a timer under its key; when the key is a cancel's tombstone, its time."""
        # Most keys name one timer: an insert (batched); a further timer under it, or one whose
        # cancel came first, an update. `due` is the latest due time of its timers: the row
        # goes with them (see sweep).
        if await self._new_keys.insert({"_id": key, "ids": [timer_id], "due": due_at}):
            return None
        index = await self.keys.find_one_and_update(
            {"_id": key},
            {"$addToSet": {"ids": timer_id}, "$max": {"due": due_at}},
            return_document=ReturnDocument.AFTER,
        )
        cancelled_at: datetime | None = index.get("cancelled_at") if index else None
        return cancelled_at

    async def cancel(self, key: str, *, now: datetime) -> int:
        """Cancel every pending timer under a key; how many were cancelled.

        A cancel that finds no key came before its schedule (the two requests can arrive in
        either order, say when one was retried): it leaves a tombstone, the key with no timer
        and `cancelled_at`, so the timer is written cancelled when it comes. The tombstone is
        swept with the other keys (its `due` is the cancel's time until a timer joins it).
        """
        index = await self.keys.find_one({"_id": key})
        if index is None:
            tombstone = {"_id": key, "ids": [], "due": now, "cancelled_at": now}
            if await insert_if_absent(self.keys, tombstone):
                return 0
            index = await self.keys.find_one({"_id": key})  # its schedule came meanwhile
            if index is None:
                return 0
        result = await self.timers.update_many(
            {"_id": {"$in": list(index["ids"])}, "key": key, "state": "pending"},
            {"$set": {"state": "cancelled", "cancelled_at": now}},
        )
        return result.modified_count

    async def coalesce(
        self,
        *,
        key: str,
        case_version: int,
        due_at: datetime,
        request: dict[str, Any],
        now: datetime,
        traceparent: str | None = None,
    ) -> str:
        """Put a case change into its coalescing window: open one, join it, or reopen it.

        The window fires in the trace of the latest change that opened or joined it
        (`traceparent`), as it sends that change's request.

        Returns "opened", "joined", "reopened" or "stale" (an older or repeated version).
        The matcher consumes one case's changes in order (the topic is keyed by case id), so
        these steps race only with the firing of the same row, which checks the version.
        """
        row = {
            "_id": key,
            "kind": "coalesce",
            "key": key,
            "state": "pending",
            "due_at": due_at,
            "claimed_until": EPOCH,
            "case_version": case_version,
            "request": request,
            "created_at": now,
        }
        latest: dict[str, Any] = {"case_version": case_version, "request": request}
        if traceparent is not None:
            row["traceparent"] = latest["traceparent"] = traceparent
        # Not under timer_keys: nothing cancels a coalescing window by key.
        if await insert_if_absent(self.timers, row):
            return "opened"
        joined = await self.timers.update_one(
            {"_id": key, "state": "pending", "case_version": {"$lt": case_version}},
            {"$set": latest},
        )
        if joined.modified_count:
            return "joined"
        # A window that closed, sent, expired unsent (it fired after the request's expiry) or
        # failed (it could not be fired, see `failed_attempt`), opens again for a newer version:
        # one that ended unsent must not swallow every later change. Its count of failed
        # attempts starts again with the new request.
        reopened = await self.timers.update_one(
            {
                "_id": key,
                "state": {"$in": ["fired", "expired", "failed"]},
                "case_version": {"$lt": case_version},
            },
            {
                "$set": {
                    "state": "pending",
                    "due_at": due_at,
                    "claimed_until": EPOCH,
                    **latest,
                    "attempts": 0,
                }
            },
        )
        return "reopened" if reopened.modified_count else "stale"

    async def postpone(self, key: str, *, case_version: int, due_at: datetime) -> bool:
        """Move a pending coalescing window's close later (its campaign's send pace)."""
        done = await self.timers.update_one(
            {"_id": key, "state": "pending", "case_version": case_version},
            {"$set": {"due_at": due_at}},
        )
        return bool(done.modified_count)

    async def due(self, *, now: datetime, limit: int) -> list[str]:
        """Ids of due, unclaimed timers, earliest first (claim each with `claim`)."""
        cursor = (
            self.timers.find(
                {"state": "pending", "due_at": {"$lte": now}, "claimed_until": {"$lte": now}},
                {"_id": 1},
            )
            .sort("due_at", ASCENDING)
            .limit(limit)
        )
        return [d["_id"] async for d in cursor]

    async def claim(self, timer_id: str, *, now: datetime, lease: timedelta) -> Doc | None:
        """Claim one due timer for this replica; None when another replica claimed it, it was
        cancelled, or it is not due."""
        return await self.timers.find_one_and_update(
            {
                "_id": timer_id,
                "state": "pending",
                "due_at": {"$lte": now},
                "claimed_until": {"$lte": now},
            },
            {"$set": {"claimed_until": now + lease, "claim": uuid.uuid4().hex}},
            return_document=ReturnDocument.AFTER,
        )

    async def settle(self, row: Doc, state: str, *, now: datetime) -> bool:
        """Mark a claimed row fired (or expired, or cancelled: its campaign was archived, or
        failed: it could not be fired); False when it changed since the claim.

        A coalescing row that took a newer case version while it fired stays pending and is
        released at once, so the newer state goes out too.
        """
        match: dict[str, Any] = {"_id": row["_id"], "state": "pending", "claim": row["claim"]}
        if row["kind"] == "coalesce":
            match["case_version"] = row["case_version"]
        done = await self.timers.update_one(match, {"$set": {"state": state, "fired_at": now}})
        if done.modified_count:
            return True
        await self.timers.update_one(
            {"_id": row["_id"], "state": "pending", "claim": row["claim"]},
            {"$set": {"claimed_until": EPOCH}},
        )
        return False

    async def failed_attempt(self, row: Doc, *, error: str) -> int | None:
        """Count an attempt to fire a claimed row that failed (`error`: the error's type, never
        its text, which may quote the request); how many have failed so far, None when the row
        changed since the claim. The row stays claimed: it is fired again after the lease."""
        counted = await self.timers.find_one_and_update(
            {"_id": row["_id"], "state": "pending", "claim": row["claim"]},
            {"$inc": {"attempts": 1}, "$set": {"error": error}},
            return_document=ReturnDocument.AFTER,
        )
        return None if counted is None else int(counted["attempts"])

    async def hold(self, row: Doc, *, until: datetime, held: bool = True) -> bool:
        """Put a claimed row back, due again at `until`; False when it changed since the claim.

        `held` marks a row put back because its campaign is paused: on resume it takes a new
        slot of the campaign's send pace (`held=False` puts it back in that slot)."""
        done = await self.timers.update_one(
            {"_id": row["_id"], "state": "pending", "claim": row["claim"]},
            {"$set": {"due_at": until, "claimed_until": EPOCH, "held": held}},
        )
        return bool(done.modified_count)

    async def sweep(self, *, before: datetime) -> int:
        """Delete settled rows due before a time (no TTL indexes on FerretDB v1); how many.

        A batch of ids at a time, deleted by `_id`: a delete by state and date would hold this
        busy collection (every SMS schedules an escalation timer) while FerretDB reads all of it.
        """
        settled = {"state": {"$in": ["fired", "expired", "cancelled", "failed"]}}
        forgotten = await forget_before(self.timers, before, field="due_at", where=settled)
        # A key goes with its latest timer (keys written before `due` are kept), unless a timer
        # under it that old is still pending (a scheduler stopped that long): its cancel needs
        # the key. Only those keys stay: one such row must not keep every other key for ever.
        overdue = self.timers.find({"state": "pending", "due_at": {"$lt": before}}, {"key": 1})
        needed = sorted({r["key"] async for r in overdue if "key" in r})
        await forget_before(self.keys, before, field="due", where={"_id": {"$nin": needed}})
        return forgotten

    async def due_count(self, *, now: datetime) -> int:
        """Timers due but not fired (an SLI)."""
        return await self.timers.count_documents({"state": "pending", "due_at": {"$lte": now}})

    async def get(self, timer_id: str) -> Doc | None:
        """One timer row."""
        return await self.timers.find_one({"_id": timer_id})
