"""Local views (from compacted topics), request claims and decisions in MongoDB."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from herald_contracts import CaseState, ContactPreferences
from herald_kit import Doc, insert_if_absent


class Views:
    """The dispatcher's copies of contacts and cases, newest version wins."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.contacts = db["view_contacts"]
        self.cases = db["view_cases"]

    async def _upsert_newer(self, coll: Any, key: str, version: int, body: Doc) -> None:
        try:
            await coll.update_one(
                {"_id": key, "version": {"$lt": version}},
                {"$set": {"version": version, "body": body}},
                upsert=True,
            )
        except DuplicateKeyError:
            pass  # we already hold this version or a newer one

    async def put_contact(self, prefs: ContactPreferences) -> None:
        """Keep a snapshot unless a newer one is held."""
        await self._upsert_newer(
            self.contacts, prefs.customer_id, prefs.version, prefs.model_dump(mode="json")
        )

    async def erase_contact(self, customer_id: str) -> None:
        """A tombstone: forget the customer."""
        await self.contacts.delete_one({"_id": customer_id})

    async def put_case(self, state: CaseState) -> None:
        """Keep a case state unless a newer one is held."""
        await self._upsert_newer(
            self.cases, state.case_id, state.version, state.model_dump(mode="json")
        )

    async def contact(self, customer_id: str) -> ContactPreferences | None:
        """A customer's preferences as last seen."""
        doc = await self.contacts.find_one({"_id": customer_id})
        return ContactPreferences.model_validate(doc["body"]) if doc else None

    async def case(self, case_id: str) -> CaseState | None:
        """A case as last seen."""
        doc = await self.cases.find_one({"_id": case_id})
        return CaseState.model_validate(doc["body"]) if doc else None


class Decisions:
    """Every decision with its rule and inputs; claims make request handling idempotent."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.claims = db["request_claims"]
        self.decisions = db["decisions"]

    async def ensure_indexes(self) -> None:
        """Explain queries by customer, case and request."""
        await self.decisions.create_index([("customer_id", 1), ("at", 1)])
        await self.decisions.create_index([("case_id", 1), ("at", 1)])
        await self.decisions.create_index([("request_id", 1), ("at", 1)])

    async def claim(self, key: str, *, now: datetime) -> Doc | None:
        """Claim a (request, attempt); the existing claim when it was handled before."""
        if await insert_if_absent(self.claims, {"_id": key, "status": "deciding", "at": now}):
            return None
        return await self.claims.find_one({"_id": key})

    async def settle(self, key: str, outcome: str) -> None:
        """Mark a claim as decided."""
        await self.claims.update_one({"_id": key}, {"$set": {"status": outcome}})

    async def record(self, decision: Doc) -> None:
        """Record a decision (idempotent by _id)."""
        await insert_if_absent(self.decisions, decision)

    async def find(self, **query: str) -> list[Doc]:
        """Decisions matching a field, oldest first."""
        cursor = self.decisions.find(query, {"_id": 0}).sort("at", 1).limit(500)
        return [d async for d in cursor]
