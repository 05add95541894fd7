"""Seen events, case projections and the timeline in MongoDB."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pymongo import DESCENDING, ReplaceOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from herald_contracts import CaseState
from herald_ingest.domain.projection import Projection
from herald_kit import Doc, insert_if_absent

DUPLICATE_KEY = 11000


def _failed_indexes(exc: BulkWriteError, *, only_duplicates: bool) -> set[int]:
    errors = exc.details.get("writeErrors", [])
    if not only_duplicates:
        return {int(e["index"]) for e in errors}
    if any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return {int(e["index"]) for e in errors}


class CaseRepository:
    """One document per case; writes are conditional on the version read."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.seen = db["seen_events"]
        self.cases = db["cases"]
        self.timeline = db["timeline"]

    async def ensure_indexes(self) -> None:
        """Indexes for reads by customer, the timeline and the sweepers."""
        await self.cases.create_index("state.customer_ids")
        await self.timeline.create_index([("case_id", 1), ("at", 1)])
        await self.seen.create_index([("status", 1), ("received_at", 1)])

    async def claim(
        self, key: str, *, case_id: str, now: datetime, event: Doc | None = None
    ) -> Doc | None:
        """Record an event as seen; the existing row when it was seen before."""
        doc = {"_id": key, "case_id": case_id, "status": "received", "received_at": now}
        if event is not None:
            doc["event"] = event
        if await insert_if_absent(self.seen, doc):
            return None
        return await self.seen.find_one({"_id": key})

    async def claim_many(self, docs: Sequence[Doc]) -> dict[str, Doc]:
        """Record many events as seen in one round trip; the earlier rows of those seen before."""
        if not docs:
            return {}
        try:
            await self.seen.insert_many(list(docs), ordered=False)
            return {}
        except BulkWriteError as exc:
            failed = _failed_indexes(exc, only_duplicates=True)
        keys = [docs[i]["_id"] for i in failed]
        return {d["_id"]: d async for d in self.seen.find({"_id": {"$in": keys}})}

    async def mark(self, key: str, status: str, version: int | None) -> None:
        """Record how an event ended."""
        await self.seen.update_one({"_id": key}, {"$set": {"status": status, "version": version}})

    async def mark_many(self, marks: Sequence[tuple[str, str, int | None]]) -> None:
        """Record how many events ended, in one round trip."""
        if marks:
            await self.seen.bulk_write(
                [UpdateOne({"_id": k}, {"$set": {"status": s, "version": v}}) for k, s, v in marks],
                ordered=False,
            )

    async def load(self, case_id: str) -> tuple[Projection, int, list[str]]:
        """The case's projection, its stored version (0 when new) and its last saved events."""
        doc = await self.cases.find_one({"_id": case_id})
        if doc is None:
            return Projection(None, {}), 0, []
        return self._projection(doc)

    @staticmethod
    def _projection(doc: Doc) -> tuple[Projection, int, list[str]]:
        state = CaseState.model_validate(doc["state"])
        last = doc.get("last_events") or ([doc["last_event"]] if doc.get("last_event") else [])
        return Projection(state, doc.get("field_order", {})), state.version, list(last)

    async def load_many(self, case_ids: Sequence[str]) -> dict[str, tuple[Projection, int]]:
        """Several cases in one round trip; missing cases are absent from the answer."""
        out: dict[str, tuple[Projection, int]] = {}
        async for doc in self.cases.find({"_id": {"$in": list(case_ids)}}):
            projection, version, _ = self._projection(doc)
            out[doc["_id"]] = (projection, version)
        return out

    @staticmethod
    def _doc(projection: Projection, event_keys: Sequence[str]) -> Doc:
        assert projection.state is not None
        return {
            "_id": projection.state.case_id,
            "state": projection.state.model_dump(mode="python"),
            "field_order": projection.field_order,
            "last_event": event_keys[-1],
            # Events applied by this write: a crash before publishing is found and healed.
            "last_events": list(event_keys),
        }

    async def save(self, projection: Projection, *, expected: int, event_key: str) -> bool:
        """Write when nobody else did meanwhile; False on a lost race."""
        doc = self._doc(projection, [event_key])
        if expected == 0:
            try:
                await self.cases.insert_one(doc)
                return True
            except DuplicateKeyError:
                return False
        result = await self.cases.replace_one({"_id": doc["_id"], "state.version": expected}, doc)
        return result.modified_count == 1

    async def save_many(self, writes: Sequence[tuple[Projection, int, Sequence[str]]]) -> set[str]:
        """Conditional writes of several cases in one round trip; the case ids that lost a race.

        An upsert whose version filter does not match tries an insert, which the unique _id
        refuses: so a lost race shows up as that operation's duplicate-key error.
        """
        if not writes:
            return set()
        ops = []
        ids = []
        for projection, expected, keys in writes:
            doc = self._doc(projection, keys)
            ids.append(doc["_id"])
            ops.append(ReplaceOne({"_id": doc["_id"], "state.version": expected}, doc, upsert=True))
        try:
            await self.cases.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            return {ids[i] for i in _failed_indexes(exc, only_duplicates=True)}
        return set()

    async def get(self, case_id: str) -> CaseState | None:
        """The current state of a case."""
        doc = await self.cases.find_one({"_id": case_id}, {"state": 1})
        return CaseState.model_validate(doc["state"]) if doc else None

    async def by_customer(self, customer_id: str, *, limit: int = 100) -> list[CaseState]:
        """Cases of a customer, newest first."""
        cursor = self.cases.find({"state.customer_ids": customer_id}, {"state": 1}).sort(
            "state.updated_at", DESCENDING
        )
        return [CaseState.model_validate(d["state"]) async for d in cursor.limit(limit)]

    async def add_timeline(self, entry: Doc) -> None:
        """Append to a case's timeline (idempotent by _id)."""
        await insert_if_absent(self.timeline, entry)

    async def add_timeline_many(self, entries: Sequence[Doc]) -> None:
        """Append several entries in one round trip; those already there are left alone."""
        if not entries:
            return
        try:
            await self.timeline.insert_many(list(entries), ordered=False)
        except BulkWriteError as exc:
            _failed_indexes(exc, only_duplicates=True)

    async def timeline_of(self, case_id: str, *, limit: int = 500) -> list[Doc]:
        """A case's timeline, oldest first."""
        cursor = self.timeline.find({"case_id": case_id}, {"_id": 0}).sort("at", 1).limit(limit)
        return [d async for d in cursor]

    async def stale_claims(self, *, before: datetime, limit: int = 100) -> list[Doc]:
        """Events claimed but never finished (a crash mid-way), oldest first."""
        cursor = self.seen.find({"status": "received", "received_at": {"$lt": before}})
        return [d async for d in cursor.sort("received_at", 1).limit(limit)]

    async def forget_seen(self, *, before: datetime) -> int:
        """Drop finished dedupe rows older than the retention window (no TTL index on FerretDB)."""
        result = await self.seen.delete_many(
            {"status": {"$in": ["applied", "unchanged"]}, "received_at": {"$lt": before}}
        )
        return int(result.deleted_count)
