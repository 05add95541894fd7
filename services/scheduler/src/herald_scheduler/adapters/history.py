"""Who was contacted when, per customer and priority: what dry runs weigh frequency caps with.

Built from `sent` statuses on delivery.status.v1 (the scheduler reads no dispatcher collection).
A contact counts once per request, as the dispatcher counts it: escalations of it share the
request id. One document per (customer, priority), addressed by `_id` (FerretDB v1 pushes only
`_id` filters down), holding the last week.
"""

from __future__ import annotations

from datetime import datetime

from pymongo.asynchronous.database import AsyncDatabase

from herald_kit import Doc, IdLoader, InsertBatcher, RecentKeys
from herald_kit.caps import WEEK

# Contacts remembered as noted (~150 bytes each): statuses of a message arrive within minutes.
REMEMBERED = 20_000


class ContactHistory:
    """The `contact_history` collection."""

    def __init__(self, db: AsyncDatabase[Doc], *, remember: int = REMEMBERED) -> None:
        self.history = db["contact_history"]
        self._new = InsertBatcher(self.history)
        # Concurrent customers' first statuses share one read (one customer's are in order).
        self._rows = IdLoader(self.history)
        # Contacts this process noted lately: a message's "sent" and "delivered" (or a voice
        # call's "answered") are the same contact, and the later ones need no read to know it.
        self._noted = RecentKeys(remember)

    async def note(self, *, customer_id: str, priority: str, request_id: str, at: datetime) -> None:
        """One contact (idempotent by request id; a redelivered status changes nothing)."""
        key = f"{customer_id}|{priority}"
        noted = f"{key}|{request_id}"
        if noted in self._noted:
            return
        doc = await self._rows.get(key)
        held = (doc or {}).get("recent", [])
        if any(c["r"] == request_id for c in held):
            self._noted.add(noted)
            return
        recent = [c for c in held if c["at"] > at - WEEK]
        recent.append({"r": request_id, "at": at})
        # Statuses are keyed by customer: one consumer writes a customer's rows at a time. A
        # customer's first contact is an insert (an upsert costs a read and a write on FerretDB).
        if not (doc is None and await self._new.insert({"_id": key, "recent": recent})):
            await self.history.update_one({"_id": key}, {"$set": {"recent": recent}}, upsert=True)
        self._noted.add(noted)

    async def sent_times(self, customer_ids: list[str], priority: str) -> dict[str, list[datetime]]:
        """Each customer's contacts at this priority in the last week (absent: none)."""
        keys = [f"{c}|{priority}" for c in customer_ids]
        out: dict[str, list[datetime]] = {}
        async for doc in self.history.find({"_id": {"$in": keys}}):
            customer = str(doc["_id"]).rsplit("|", 1)[0]
            out[customer] = [c["at"] for c in doc.get("recent", [])]
        return out
