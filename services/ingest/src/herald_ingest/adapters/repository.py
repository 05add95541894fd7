"""Seen events, case projections and the timeline in MongoDB."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from herald_contracts import CaseState
from herald_ingest.domain.projection import Projection
from herald_kit import Doc, insert_if_absent


class CaseRepository:
    """One document per case; writes are conditional on the version read."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.seen = db["seen_events"]
        self.cases = db["cases"]
        self.timeline = db["timeline"]

    async def ensure_indexes(self) -> None:
        """Indexes for reads by customer and the timeline."""
        await self.cases.create_index("state.customer_ids")
        await self.timeline.create_index([("case_id", 1), ("at", 1)])

    async def claim(self, key: str, *, case_id: str, now: datetime) -> Doc | None:
        """Record an event as seen; the existing row when it was seen before."""
        doc = {"_id": key, "case_id": case_id, "status": "received", "received_at": now}
        if await insert_if_absent(self.seen, doc):
            return None
        return await self.seen.find_one({"_id": key})

    async def mark(self, key: str, status: str, version: int | None) -> None:
        """Record how an event ended."""
        await self.seen.update_one({"_id": key}, {"$set": {"status": status, "version": version}})

    async def load(self, case_id: str) -> tuple[Projection, int, str | None]:
        """The case's projection, its stored version (0 when new) and its last event key."""
        doc = await self.cases.find_one({"_id": case_id})
        if doc is None:
            return Projection(None, {}), 0, None
        state = CaseState.model_validate(doc["state"])
        return Projection(state, doc.get("field_order", {})), state.version, doc.get("last_event")

    async def save(self, projection: Projection, *, expected: int, event_key: str) -> bool:
        """Write when nobody else did meanwhile; False on a lost race."""
        assert projection.state is not None
        doc: dict[str, Any] = {
            "_id": projection.state.case_id,
            "state": projection.state.model_dump(mode="python"),
            "field_order": projection.field_order,
            "last_event": event_key,
        }
        if expected == 0:
            try:
                await self.cases.insert_one(doc)
                return True
            except DuplicateKeyError:
                return False
        result = await self.cases.replace_one({"_id": doc["_id"], "state.version": expected}, doc)
        return result.modified_count == 1

    async def get(self, case_id: str) -> CaseState | None:
        """The current state of a case."""
        doc = await self.cases.find_one({"_id": case_id})
        return CaseState.model_validate(doc["state"]) if doc else None

    async def by_customer(self, customer_id: str, *, limit: int = 100) -> list[CaseState]:
        """Cases of a customer, newest first."""
        cursor = self.cases.find({"state.customer_ids": customer_id}).sort(
            "state.updated_at", DESCENDING
        )
        return [CaseState.model_validate(d["state"]) async for d in cursor.limit(limit)]

    async def add_timeline(self, entry: Doc) -> None:
        """Append to a case's timeline (idempotent by _id)."""
        await insert_if_absent(self.timeline, entry)

    async def timeline_of(self, case_id: str, *, limit: int = 500) -> list[Doc]:
        """A case's timeline, oldest first."""
        cursor = self.timeline.find({"case_id": case_id}, {"_id": 0}).sort("at", 1).limit(limit)
        return [d async for d in cursor]
