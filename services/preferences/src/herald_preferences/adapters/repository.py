"""Contacts and the append-only consent ledger in MongoDB."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from herald_kit import Conflict, Doc, PreconditionFailed


class ContactRepository:
    """Single-document atomic writes with a version for optimistic concurrency."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.contacts = db["contacts"]
        self.ledger = db["consent_ledger"]

    async def ensure_indexes(self) -> None:
        """Indexes the queries and the ledger need."""
        await self.ledger.create_index([("customer_id", 1), ("at", 1)])

    async def get(self, customer_id: str) -> Doc | None:
        """A contact, or None."""
        return await self.contacts.find_one({"_id": customer_id})

    async def create(self, doc: Doc) -> None:
        """Insert a new contact; Conflict when it exists."""
        try:
            await self.contacts.insert_one(doc)
        except DuplicateKeyError as exc:
            raise Conflict(f"contact {doc['_id']!r} exists", field="customer_id") from exc

    async def replace(self, doc: Doc, *, expected_version: int) -> Doc:
        """Replace when the stored version is the expected one; PreconditionFailed otherwise."""
        result = await self.contacts.find_one_and_replace(
            {"_id": doc["_id"], "version": expected_version},
            doc,
            return_document=ReturnDocument.AFTER,
        )
        if result is None:
            raise PreconditionFailed("the contact changed since it was read", field="If-Match")
        return result

    async def append_consents(
        self,
        customer_id: str,
        changes: list[tuple[str, str, bool]],
        *,
        source: str,
        actor: str,
        at: datetime,
        proof: str | None = None,
    ) -> None:
        """Append ledger entries; the ledger is never rewritten."""
        if not changes:
            return
        entries: list[dict[str, Any]] = [
            {
                "_id": str(uuid.uuid4()),
                "customer_id": customer_id,
                "topic": topic,
                "channel": channel,
                "granted": granted,
                "source": source,
                "actor": actor,
                "at": at,
                "proof": proof,
            }
            for topic, channel, granted in changes
        ]
        await self.ledger.insert_many(entries)
