"""Local views (from compacted topics), request claims and decisions in MongoDB."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel
from pymongo.asynchronous.database import AsyncDatabase

from herald_contracts import CaseState, ContactPreferences, ContactRequest
from herald_kit import Doc, IdLoader, InsertBatcher, UpdateBatcher, validate_own
from herald_kit.caps import WEEK
from herald_kit.paging import Position, after

M = TypeVar("M", bound=BaseModel)


def _snapshot(model: type[M], doc: Doc | None) -> M | None:
    """A view row's snapshot: a JSON string (one opaque field for the database to store and
    return, where a nested document costs FerretDB a conversion per field), or the nested
    `body` of rows written before it."""
    if doc is None:
        return None
    kind = f"view.{model.__name__}"
    return validate_own(model, doc["json"] if "json" in doc else doc["body"], kind=kind)


def stored_request(value: str | Doc) -> ContactRequest:
    """An attempt's next request: a JSON string, or a nested document in rows written before."""
    return validate_own(ContactRequest, value, kind="attempts.next")


class Views:
    """The dispatcher's copies of contacts and cases, newest version wins."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.contacts = db["view_contacts"]
        self.cases = db["view_cases"]
        # Decisions of many customers run at once: their reads go to the database together.
        self._contact = IdLoader(self.contacts)
        self._case = IdLoader(self.cases)
        # Snapshots of many keys are applied at once: their version reads and first inserts too.
        self._versions = {
            self.contacts.name: IdLoader(self.contacts, projection={"version": 1}),
            self.cases.name: IdLoader(self.cases, projection={"version": 1}),
        }
        self._inserts = {
            self.contacts.name: InsertBatcher(self.contacts),
            self.cases.name: InsertBatcher(self.cases),
        }

    async def _upsert_newer(self, coll: Any, key: str, version: int, body: str) -> None:
        # Filters on _id alone: FerretDB v1 scans the collection when an update's filter has
        # any other field. One consumer owns each key's partition and handles a key's records
        # in order, so read-then-write is safe; the version check still keeps a redelivered
        # older snapshot from winning.
        for _ in range(3):
            current = await self._versions[coll.name].get(key)
            if current is not None and current.get("version", 0) >= version:
                return
            if current is None:
                doc = {"_id": key, "version": version, "json": body}
                if await self._inserts[coll.name].insert(doc):
                    return
                continue
            await coll.replace_one({"_id": key}, {"version": version, "json": body})
            return

    async def put_contact(self, prefs: ContactPreferences) -> None:
        """Keep a snapshot unless a newer one is held."""
        await self._upsert_newer(
            self.contacts, prefs.customer_id, prefs.version, prefs.model_dump_json()
        )

    async def erase_contact(self, customer_id: str) -> None:
        """A tombstone: forget the customer."""
        await self.contacts.delete_one({"_id": customer_id})

    async def put_case(self, state: CaseState) -> None:
        """Keep a case state unless a newer one is held."""
        await self._upsert_newer(self.cases, state.case_id, state.version, state.model_dump_json())

    async def contact(self, customer_id: str) -> ContactPreferences | None:
        """A customer's preferences as last seen."""
        doc = await self._contact.get(customer_id)
        return _snapshot(ContactPreferences, doc)

    async def case(self, case_id: str) -> CaseState | None:
        """A case as last seen."""
        doc = await self._case.get(case_id)
        return _snapshot(CaseState, doc)


class Decisions:
    """Every decision with its rule and inputs; claims make request handling idempotent."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.claims = db["request_claims"]
        self.decisions = db["decisions"]
        self._claims = InsertBatcher(self.claims)
        self._decisions = InsertBatcher(self.decisions)

    async def ensure_indexes(self) -> None:
        """Explain queries by customer, case and request."""
        await self.decisions.create_index([("customer_id", 1), ("at", 1)])
        await self.decisions.create_index([("case_id", 1), ("at", 1)])
        await self.decisions.create_index([("request_id", 1), ("at", 1)])

    async def claim(self, key: str, *, now: datetime) -> Doc | None:
        """Claim a (request, attempt); its recorded decision when it was decided before.

        None also when a claim exists without a decision (a crash mid-way): decide again. The
        decision's _id is the claim key, so no second write is needed to settle the claim.
        """
        if await self._claims.insert({"_id": key, "at": now}):
            return None
        return await self.decisions.find_one({"_id": key})

    async def record(self, decision: Doc) -> None:
        """Record a decision (idempotent by _id)."""
        await self._decisions.insert(decision)

    async def find(
        self, *, start: Position | None = None, limit: int = 500, **query: str
    ) -> list[Doc]:
        """Decisions matching a field, oldest first, from `start` (see herald_kit.paging)."""
        where, skip = after(dict(query), start)
        cursor = self.decisions.find(where, {"_id": 0}).sort("at", 1).skip(skip)
        return [d async for d in cursor.limit(limit)]


@dataclass(slots=True)
class RequestState:
    """Supersession state of (campaign, case, customer): the newest trigger order and the newest
    case version the customer was told, and what the ledger holds (None: nothing yet)."""

    key: str
    order: int
    told: int
    stored: tuple[int, int] | None
    told_by: str | None = None  # the request whose contact told the customer `told`


@dataclass(slots=True)
class CapHistory:
    """A customer's recent contacts at one priority, as read from the ledger."""

    key: str
    recent: list[dict[str, Any]]
    stored: bool

    def sent_times(self, *, exclude: str = "") -> list[datetime]:
        """When the customer was contacted (but for one request)."""
        return [c["at"] for c in self.recent if c["r"] != exclude]


@dataclass(slots=True)
class LastContent:
    """The last message sent to a customer on one channel about one case: a digest of its
    content, its message id and when (all None when nothing was sent yet)."""

    key: str
    digest: str | None
    message_id: str | None
    at: datetime | None
    campaign_id: str | None = None
    trigger_key: str | None = None


def content_key(customer_id: str, channel: str, case_id: str | None) -> str:
    """The `last_contents` row of (customer, channel, case); `-` for messages without a case."""
    return f"{customer_id}|{channel}|{case_id or '-'}"


class Ledger:
    """What the dispatcher has emitted: latest requests, contacts for caps, attempts, success."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.latest = db["latest_requests"]
        self.contacts = db["contacts_sent"]
        self.attempts = db["attempts"]
        self.outcomes = db["request_outcomes"]
        self.contents = db["last_contents"]
        # The hot path's single-document calls, coalesced across concurrent decisions.
        self._latest = IdLoader(self.latest)
        self._new_latest = InsertBatcher(self.latest)
        self._latest_updates = UpdateBatcher(self.latest)
        self._contacts = IdLoader(self.contacts)
        self._new_contacts = InsertBatcher(self.contacts)
        self._contact_updates = UpdateBatcher(self.contacts)
        self._attempts = InsertBatcher(self.attempts)
        self._attempt = IdLoader(self.attempts)
        self._outcome = IdLoader(self.outcomes)
        self._new_outcome = InsertBatcher(self.outcomes)
        self._content = IdLoader(self.contents)
        self._new_contents = InsertBatcher(self.contents)
        self._content_updates = UpdateBatcher(self.contents)

    async def ensure_indexes(self) -> None:
        """Attempts by customer and case (replies without a message id)."""
        await self.attempts.create_index([("customer_id", 1), ("case_id", 1)])

    async def request_state(self, key: str, order: int) -> RequestState:
        """For (campaign, case, customer): the newest trigger order known (counting this one) and
        the newest case version already sent. One read; `save_request_state` writes once."""
        doc = await self._latest.get(key)
        if doc is None:
            return RequestState(key, order=order, told=0, stored=None)
        stored = (int(doc.get("order", 0)), int(doc.get("told", 0)))
        return RequestState(
            key,
            order=max(order, stored[0]),
            told=stored[1],
            stored=stored,
            told_by=doc.get("told_by"),
        )

    async def save_request_state(
        self, state: RequestState, *, told: int = 0, by: str | None = None
    ) -> None:
        """Write what the decision learnt (a newer order, a version told and by which request)
        in one write: an insert the first time (cheap and batched on FerretDB), else one update
        when it moved. Requests of one customer are decided one at a time (keyed partitions),
        so the values read are the values to move on from."""
        if told > state.told:
            state.told, state.told_by = told, by
        body = {"order": state.order, "told": state.told, "told_by": state.told_by}
        if state.stored is None:
            if await self._new_latest.insert({"_id": state.key, **body}):
                state.stored = (state.order, state.told)
                return
        elif (state.order, state.told) == state.stored:
            return
        await self._latest_updates.update({"_id": state.key}, {"$set": body})
        state.stored = (state.order, state.told)

    async def cap_history(self, customer_id: str, priority: str) -> CapHistory:
        """This customer's contacts at this priority in the last week, read once per decision.

        One document per customer and priority, read by _id: FerretDB v1 pushes only _id
        filters down to its storage, so a query by customer would scan every contact.
        """
        key = f"{customer_id}|{priority}"
        doc = await self._contacts.get(key)
        return CapHistory(key, list((doc or {}).get("recent", [])), stored=doc is not None)

    async def note_contact(self, request_id: str, history: CapHistory, at: datetime) -> None:
        """Count one contact towards the customer's caps (once per request; a week is kept).

        `history` is what this decision read: one consumer decides a customer at a time (keyed
        partitions), so read-modify-write holds.
        """
        recent = [c for c in history.recent if c["at"] > at - WEEK]
        if any(c["r"] == request_id for c in recent):
            return
        recent.append({"r": request_id, "at": at})
        # A customer's first contact is an insert (batched; an upsert costs a read and a write
        # on FerretDB).
        if not history.stored and await self._new_contacts.insert(
            {"_id": history.key, "recent": recent}
        ):
            return
        await self._contact_updates.update(
            {"_id": history.key}, {"$set": {"recent": recent}}, upsert=True
        )

    async def last_content(self, key: str) -> LastContent:
        """What the customer was last sent on one channel about one case (see `content_key`)."""
        doc = await self._content.get(key)
        if doc is None:
            return LastContent(key, digest=None, message_id=None, at=None)
        return LastContent(
            key,
            digest=doc["h"],
            message_id=doc["m"],
            at=doc["at"],
            campaign_id=doc.get("c"),
            trigger_key=doc.get("t"),
        )

    async def note_content(
        self, last: LastContent, digest: str, mid: str, at: datetime, request: ContactRequest
    ) -> None:
        """Remember the content just sent, and which campaign and trigger sent it, in place of
        the last (one consumer decides a customer at a time, so the read `last` is still the
        stored one)."""
        body = {"h": digest, "m": mid, "at": at, "c": request.campaign.id, "t": request.trigger_key}
        if last.at is None and await self._new_contents.insert({"_id": last.key, **body}):
            return
        await self._content_updates.update({"_id": last.key}, {"$set": body}, upsert=True)

    async def forget_content(self, key: str, message_id: str) -> None:
        """The message did not reach the customer: if it is the last content, forget it."""
        await self.contents.delete_one({"_id": key, "m": message_id})

    async def note_attempt(self, doc: Doc) -> None:
        """An emitted message, by message id, with what escalation needs."""
        await self._attempts.insert(doc)

    async def attempt(self, message_id: str) -> Doc | None:
        """One emitted message (concurrent lookups of statuses and replies share one find)."""
        return await self._attempt.get(message_id)

    async def open_attempts(self, customer_id: str, case_id: str) -> list[Doc]:
        """Emitted messages for a customer's case (to stop escalation on a reply)."""
        cursor = self.attempts.find({"customer_id": customer_id, "case_id": case_id})
        return [d async for d in cursor]

    async def mark(self, request_id: str, field: str, *, at: datetime) -> bool:
        """Set a request's outcome flag ('delivered', 'engaged'); True when it is new. `at` is
        the first flag's time, which retention goes by."""
        # Most flags are a request's first (an insert, batched); a second flag is an update.
        if await self._new_outcome.insert({"_id": request_id, field: True, "at": at}):
            return True
        result = await self.outcomes.update_one(
            {"_id": request_id, field: {"$ne": True}}, {"$set": {field: True}}, upsert=False
        )
        return bool(result.modified_count)

    async def outcome(self, request_id: str) -> Doc:
        """A request's outcome flags."""
        return await self._outcome.get(request_id) or {}
