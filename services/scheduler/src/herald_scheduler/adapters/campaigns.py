"""Campaigns in MongoDB: one document per campaign, its current version inline."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from herald_kit import Conflict, Doc, NotFound, PreconditionFailed
from herald_scheduler.domain.campaigns import CampaignIn, CampaignStatus

ALLOWED: dict[str, tuple[CampaignStatus, ...]] = {
    "activate": ("draft", "paused"),
    "pause": ("active",),
    "resume": ("paused",),
    "archive": ("draft", "active", "paused"),
}
TARGET: dict[str, CampaignStatus] = {
    "activate": "active",
    "pause": "paused",
    "resume": "active",
    "archive": "archived",
}


class CampaignRepository:
    """Campaign documents with a status and a version."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.campaigns = db["campaigns"]
        # Every version ever saved: running contacts carry theirs, operators audit them here.
        self.versions = db["campaign_versions"]
        self._active_reads: dict[str, asyncio.Future[list[Doc]]] = {}

    async def ensure_indexes(self) -> None:
        """Matching reads active campaigns by trigger type."""
        await self.campaigns.create_index([("status", 1), ("definition.trigger.event_types", 1)])

    async def create(self, body: CampaignIn, *, now: datetime) -> Doc:
        """A new draft campaign at version 1."""
        doc = {
            "_id": str(uuid.uuid4()),
            "version": 1,
            "status": "draft",
            "definition": body.model_dump(mode="json"),
            "created_at": now,
            "updated_at": now,
        }
        await self.campaigns.insert_one(doc)
        await self._keep_version(doc)
        return doc

    async def _keep_version(self, doc: Doc) -> None:
        await self.versions.update_one(
            {"_id": f"{doc['_id']}:{doc['version']}"},
            {"$setOnInsert": {"definition": doc["definition"], "saved_at": doc["updated_at"]}},
            upsert=True,
        )

    async def update(
        self,
        campaign_id: str,
        body: CampaignIn,
        *,
        expected_versions: list[int] | None,
        now: datetime,
    ) -> Doc:
        """Save a new version when the current one is among `expected_versions`, those the
        caller saw (optimistic concurrency); None: whatever version is current (`If-Match: *`)."""
        query: dict[str, Any] = {"_id": campaign_id, "status": {"$ne": "archived"}}
        if expected_versions is not None:
            query["version"] = {"$in": expected_versions}
        doc = await self.campaigns.find_one_and_update(
            query,
            {
                "$set": {"definition": body.model_dump(mode="json"), "updated_at": now},
                "$inc": {"version": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            current = await self.get(campaign_id)
            if current["status"] == "archived":
                raise Conflict("an archived campaign cannot change", field="status")
            named = ", ".join(str(v) for v in expected_versions or ())
            raise PreconditionFailed(
                f"the campaign is at version {current['version']}, not {named}",
                field="If-Match",
            )
        await self._keep_version(doc)
        return doc

    async def get(self, campaign_id: str) -> Doc:
        """A campaign; NotFound otherwise."""
        doc = await self.campaigns.find_one({"_id": campaign_id})
        if doc is None:
            raise NotFound(f"no campaign {campaign_id!r}")
        return doc

    async def page(self, *, status: str | None, limit: int, after: str | None) -> list[Doc]:
        """Campaigns by id, paginated by the last id seen."""
        query: dict[str, Any] = {}
        if status:
            query["status"] = status
        if after:
            query["_id"] = {"$gt": after}
        cursor = self.campaigns.find(query).sort("_id", 1).limit(limit)
        return [d async for d in cursor]

    async def transition(self, campaign_id: str, action: str, *, now: datetime) -> Doc:
        """Move a campaign's status; Conflict when the action does not apply."""
        doc = await self.campaigns.find_one_and_update(
            {"_id": campaign_id, "status": {"$in": list(ALLOWED[action])}},
            {"$set": {"status": TARGET[action], "updated_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            current = await self.get(campaign_id)
            raise Conflict(
                f"cannot {action} a campaign that is {current['status']}", field="status"
            )
        return doc

    async def active_schedules(self) -> list[Doc]:
        """Active campaigns with a schedule trigger."""
        cursor = self.campaigns.find({"status": "active", "definition.trigger.kind": "schedule"})
        return [d async for d in cursor]

    async def active_for(self, event_type: str) -> list[Doc]:
        """Active campaigns triggered by an event type. Callers that ask while the same
        question is being read share that read (changes are matched concurrently); nothing is
        kept once it is answered, so a paused campaign is out of the next read."""
        reading = self._active_reads.get(event_type)
        if reading is None:
            reading = asyncio.ensure_future(self._read_active(event_type))
            self._active_reads[event_type] = reading
            reading.add_done_callback(lambda _: self._active_reads.pop(event_type, None))
        return list(await asyncio.shield(reading))

    async def _read_active(self, event_type: str) -> list[Doc]:
        cursor = self.campaigns.find(
            {"status": "active", "definition.trigger.event_types": event_type}
        )
        return [d async for d in cursor]
