"""Contacts, the append-only consent ledger and idempotency records in MongoDB.

No transactions (FerretDB v1), so a write that changes consent stores the new ledger entries in
the contact document itself (`pending`) with the same single-document, version-checked write;
`flush` copies them into the ledger (deterministic ids: a second copy is a no-op) and the
publisher clears them. A crash between the two loses nothing. An import of new contacts copies
its entries to the ledger before inserting the contacts instead (see create_imported).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime, timedelta

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from herald_kit import Conflict, Doc, PreconditionFailed

DUPLICATE = 11000


class ContactRepository:
    """Single-document atomic writes with a version for optimistic concurrency."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.contacts = db["contacts"]
        self.ledger = db["consent_ledger"]
        self.idempotency = db["idempotency"]
        # Small: one marker per contact (or import batch) written but not yet flushed. FerretDB
        # v1 scans collections for anything but _id lookups, so the republisher reads this
        # instead of searching 100k contacts for a flag.
        self.outbox = db["outbox"]

    async def ensure_indexes(self) -> None:
        """Indexes the queries and the ledger need."""
        await self.ledger.create_index([("customer_id", ASCENDING), ("version", ASCENDING)])
        await self.outbox.create_index([("at", ASCENDING)])
        await self.idempotency.create_index([("customer_id", ASCENDING)])

    async def get(self, customer_id: str) -> Doc | None:
        """A contact (erased ones included until their tombstone is out), or None."""
        return await self.contacts.find_one({"_id": customer_id})

    async def versions(self, customer_ids: Sequence[str]) -> dict[str, Doc]:
        """The stored version (and erased flag) of each of these contacts that exists, by
        `_id` in one round trip."""
        if not customer_ids:
            return {}
        cursor = self.contacts.find(
            {"_id": {"$in": list(customer_ids)}}, projection={"version": 1, "erased": 1}
        )
        return {doc["_id"]: doc async for doc in cursor}

    async def page(self, *, after: str | None, limit: int) -> list[Doc]:
        """Contacts in customer-id order, after a cursor."""
        query: Doc = {"erased": {"$ne": True}}
        if after is not None:
            query["_id"] = {"$gt": after}
        cursor = self.contacts.find(query).sort("_id", ASCENDING).limit(limit)
        return [doc async for doc in cursor]

    async def ledger_of(self, customer_id: str, contact: Doc | None = None) -> list[Doc]:
        """Every stored ledger entry of a customer, in ledger order.

        A contact written since entries were indexed names them all (`ledger_ids`), and they
        are read by `_id` (FerretDB v1 would scan the whole ledger for a customer_id filter);
        otherwise, by customer id. Without a contact (one about to be created), an import
        batch's entries are left out: a batch copies them before inserting its contacts, so
        they are another writer's, and removed if that batch finds the contact exists.
        """
        ids = (contact or {}).get("ledger_ids")
        if ids is not None:
            entries = (
                [e async for e in self.ledger.find({"_id": {"$in": list(ids)}})] if ids else []
            )
            return sorted(entries, key=lambda e: (e["version"], e["n"]))
        cursor = self.ledger.find({"customer_id": customer_id}).sort(
            [("version", ASCENDING), ("n", ASCENDING)]
        )
        entries = [doc async for doc in cursor]
        if contact is None:
            entries = [e for e in entries if not str(e.get("proof") or "").startswith("import:")]
        return entries

    async def create(self, doc: Doc) -> None:
        """Insert a new contact; Conflict when it exists."""
        try:
            await self.contacts.insert_one(doc)
        except DuplicateKeyError as exc:
            raise Conflict(f"contact {doc['_id']!r} exists", field="customer_id") from exc

    async def create_many(self, docs: Sequence[Doc]) -> set[int]:
        """Insert contacts in one round trip; the indexes of those that already existed."""
        if not docs:
            return set()
        try:
            await self.contacts.insert_many(list(docs), ordered=False)
        except BulkWriteError as exc:
            failed = exc.details.get("writeErrors", [])
            dupes = {e["index"] for e in failed if e["code"] == DUPLICATE}
            others = [e for e in failed if e["code"] != DUPLICATE]
            if others:
                raise
            return dupes
        return set()

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

    async def copy_to_ledger(self, entries: Sequence[Doc]) -> None:
        """Append entries to the ledger; entries already there (same id) are skipped."""
        if not entries:
            return
        try:
            await self.ledger.insert_many(list(entries), ordered=False)
        except BulkWriteError as exc:
            if any(e["code"] != DUPLICATE for e in exc.details.get("writeErrors", [])):
                raise

    async def delete_erased(self, customer_id: str, version: int) -> None:
        """Drop an erased contact's marker once its tombstone is out."""
        await self.contacts.delete_one({"_id": customer_id, "version": version, "erased": True})

    async def intend(self, customer_id: str, *, now: datetime) -> int:
        """Record, before a write, that the contact must be flushed; the claim number to clear.

        Each intent bumps `n`, so a flush only clears the marker when no later writer has
        claimed it meanwhile (their write then still gets flushed).
        """
        for _ in range(3):
            try:
                marker = await self.outbox.find_one_and_update(
                    {"_id": customer_id},
                    {"$inc": {"n": 1}, "$set": {"at": now}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                continue  # two upserts raced to insert; the marker exists now, so update it
            if marker is not None:
                return int(marker["n"])
        raise RuntimeError("could not leave a flush marker")

    async def create_imported(
        self, batch_id: str, docs: Sequence[Doc], *, now: datetime
    ) -> tuple[str, set[int]]:
        """Insert new contacts from one import batch; the flush marker and the indexes of the
        contacts that already existed.

        Ledger first, then contacts, so no entry waits in the contact document (`pending`): a
        contact's document is the larger part of an import's database work. The batch's
        entries carry the batch in their ids (see entries_for), so they never stand in for
        another writer's entry; those of rows that turned out to exist are deleted, and the
        marker, written first, names every row and its entry count so the republisher can
        finish the same after a crash (a contact whose `ledger_ids` name the entries is the
        batch's; otherwise the entries are removed).
        """
        entries = [list(d.get("pending", [])) for d in docs]
        rows = [{k: v for k, v in d.items() if k != "pending"} for d in docs]
        marker_id = f"import:{batch_id}"
        await self.outbox.insert_one(
            {
                "_id": marker_id,
                "n": 0,
                "at": now,
                "batch": batch_id,
                "customers": [d["_id"] for d in rows],
                "entries": [len(e) for e in entries],
            }
        )
        await self.copy_to_ledger([e for row in entries for e in row])
        existing = await self.create_many(rows)
        await self.drop_ledger([e["_id"] for i in existing for e in entries[i]])
        return marker_id, existing

    async def drop_ledger(self, entry_ids: Sequence[str]) -> None:
        """Delete ledger entries by id (an import batch's entries of rows it did not create)."""
        if entry_ids:
            await self.ledger.delete_many({"_id": {"$in": list(entry_ids)}})

    async def done(self, marker_id: str, n: int) -> None:
        """Clear a flush marker unless someone claimed it again since."""
        await self.outbox.delete_one({"_id": marker_id, "n": n})

    async def due(self, *, older_than: datetime, limit: int = 500) -> list[Doc]:
        """Flush markers left behind (a crash or a broker outage after the write)."""
        cursor = self.outbox.find({"at": {"$lt": older_than}}).limit(limit)
        return [doc async for doc in cursor]

    async def anonymise_ledger(self, customer_id: str, *, secret: bytes) -> int:
        """Replace the customer id in ledger entries by a keyed hash: the evidence stays, the
        person is no longer named. Returns the number of entries kept."""

        def keyed(value: str) -> str:
            return "erased:" + hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()

        # Entry ids name the customer and an _id cannot change: copy each entry under a keyed
        # id, then drop the originals. Both steps are idempotent, so a crash in between is
        # repaired by erasing again.
        entries = await self.ledger.find({"customer_id": customer_id}).to_list()
        copies = [
            {**e, "_id": keyed(e["_id"]), "customer_id": keyed(customer_id), "erased": True}
            for e in entries
        ]
        await self.copy_to_ledger(copies)
        await self.ledger.delete_many({"customer_id": customer_id})
        await self.idempotency.delete_many({"customer_id": customer_id})
        return len(copies)


class IdempotencyStore:
    """Idempotency-Key records: the first request's fingerprint and its response."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.rows = db["idempotency"]

    async def claim(
        self,
        key: str,
        fingerprint: str,
        *,
        now: datetime,
        stale: timedelta,
        token: str,
        customer_id: str | None = None,
    ) -> Doc | None:
        """Claim a key; None when this request owns it now, else the existing record.

        A claim left pending by a crashed request is taken over after `stale`. The claim names
        the customer the request writes when known, so an erase while it runs deletes it and
        its response (the customer's addresses) is never stored (see complete). `token` names
        this request's claim: a release or completion retried late (the database was away)
        touches only its own claim, never one a later request took over.
        """
        try:
            await self.rows.insert_one(
                {
                    "_id": key,
                    "fingerprint": fingerprint,
                    "state": "pending",
                    "token": token,
                    "at": now,
                    "customer_id": customer_id,
                }
            )
            return None
        except DuplicateKeyError:
            pass
        taken = await self.rows.find_one_and_update(
            {
                "_id": key,
                "state": "pending",
                "fingerprint": fingerprint,
                "at": {"$lt": now - stale},
            },
            {"$set": {"at": now, "token": token}},
        )
        if taken is not None:
            return None
        return await self.rows.find_one({"_id": key})

    async def complete(
        self,
        key: str,
        *,
        token: str,
        status: int,
        body: bytes,
        headers: dict[str, str],
        customer_id: str | None,
    ) -> None:
        """Store the response to replay, in the claim only if it is still there: an erase of
        the customer meanwhile deleted it, and the response must not outlive the erase."""
        await self.rows.update_one(
            {"_id": key, "state": "pending", "token": token},
            {
                "$set": {
                    "state": "done",
                    "status": status,
                    "body": body,
                    "headers": headers,
                    "customer_id": customer_id,
                }
            },
        )

    async def release(self, key: str, *, token: str) -> None:
        """Forget a claim whose request failed without effect, so it may be retried."""
        await self.rows.delete_one({"_id": key, "state": "pending", "token": token})
