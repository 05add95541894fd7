"""Seen events, case projections and the timeline in MongoDB."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from pymongo import DESCENDING, ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from herald_contracts import CaseState, utc_now
from herald_ingest.domain.projection import OrderKey, Projection
from herald_kit import Doc, InsertBatcher, forget_before, insert_if_absent, validate_own
from herald_kit.paging import Position, after

DUPLICATE_KEY = 11000
# Conditional replaces per bulk_write command. (Before the FerretDB patch, each operation of a
# command scanned the collection, so large commands stalled; now they address the _id index.)
CHUNK = 250
CALLBACKS = "status_callbacks"


def _failed_indexes(exc: BulkWriteError, *, only_duplicates: bool) -> set[int]:
    errors = exc.details.get("writeErrors", [])
    if not only_duplicates:
        return {int(e["index"]) for e in errors}
    if any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return {int(e["index"]) for e in errors}


# What a write did with each of its events: (event key, the version it made or None if it only
# kept newer order keys, whether it was late). Kept with the case, so that an attempt that
# crashed after the write announces each event again exactly as it was first announced.
Applied = tuple[str, int | None, bool]
# Where a scan of claims stands: a claim time, and the key of the last claim of that time read
# (None to start at the first claim of that time).
ClaimPosition = tuple[datetime, str | None]


class CaseRepository:
    """One document per case; writes are conditional on the version read."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.seen = db["seen_events"]
        # How each seen event ended. Insert-only (FerretDB updates cost a transaction each),
        # so finishing a batch is one cheap insert_many rather than an update per event.
        self.done = db["seen_done"]
        self.cases = db["cases"]
        self.timeline = db["timeline"]
        # Call-backs asked for from status links, a row per link, day and slot (see
        # take_callback); forgotten by the kit's retention sweep (app.py).
        self.callbacks = db[CALLBACKS]
        self._new_timeline = InsertBatcher(self.timeline)

    async def ensure_indexes(self) -> None:
        """Indexes for reads by customer, the timeline and the sweepers."""
        await self.cases.create_index("state.customer_ids")
        await self.timeline.create_index([("case_id", 1), ("at", 1)])
        await self.seen.create_index("received_at")
        await self.done.create_index("at")

    async def claim(
        self, key: str, *, case_id: str, now: datetime, event: Doc | None = None
    ) -> Doc | None:
        """Record an event as seen; the existing row when it was seen before."""
        doc = {"_id": key, "case_id": case_id, "status": "received", "received_at": now}
        if event is not None:
            doc["event"] = event
        if await insert_if_absent(self.seen, doc):
            return None
        return (await self._with_outcome([key])).get(key)

    async def claim_many(self, docs: Sequence[Doc]) -> dict[str, Doc]:
        """Record many events as seen in one round trip; the earlier rows of those seen before."""
        if not docs:
            return {}
        try:
            await self.seen.insert_many(list(docs), ordered=False)
            return {}
        except BulkWriteError as exc:
            failed = _failed_indexes(exc, only_duplicates=True)
        return await self._with_outcome([docs[i]["_id"] for i in failed])

    async def _with_outcome(self, keys: Sequence[str]) -> dict[str, Doc]:
        """Seen rows of these keys, with the status they ended in ("received" if unfinished)."""
        rows = {d["_id"]: d async for d in self.seen.find({"_id": {"$in": list(keys)}})}
        async for d in self.done.find({"_id": {"$in": list(keys)}}):
            if d["_id"] in rows:
                rows[d["_id"]] = {**rows[d["_id"]], "status": d["status"]}
        return rows

    async def forget_events(self, keys: Sequence[str]) -> None:
        """Drop the claims and timeline entries of events refused after they were claimed:
        nothing of them was applied, and a retry must meet no duplicate."""
        await self.seen.delete_many({"_id": {"$in": list(keys)}})
        await self.timeline.delete_many({"_id": {"$in": [f"event|{k}" for k in keys]}})

    async def mark(self, key: str, status: str, version: int | None) -> None:
        """Record how an event ended."""
        await self.mark_many([(key, status, version)])

    async def mark_many(self, marks: Sequence[tuple[str, str, int | None]]) -> None:
        """Record how many events ended; a second record of the same end is ignored."""
        if not marks:
            return
        now = utc_now()
        docs = [{"_id": k, "status": s, "version": v, "at": now} for k, s, v in marks]
        try:
            await self.done.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            _failed_indexes(exc, only_duplicates=True)

    async def load(
        self, case_id: str
    ) -> tuple[Projection, int, dict[str, tuple[int | None, bool] | None]]:
        """The case's projection, its stored version (0 when new) and the events its last write
        applied, each with the version it made and whether it was late (None when stored by an
        older version of ingest, which kept only the keys)."""
        doc = await self.cases.find_one({"_id": case_id})
        if doc is None:
            return Projection(None, {}), 0, {}
        return self._projection(doc)

    @staticmethod
    def _projection(
        doc: Doc,
    ) -> tuple[Projection, int, dict[str, tuple[int | None, bool] | None]]:
        state = validate_own(CaseState, doc["state"], kind="cases.state")
        last: dict[str, tuple[int | None, bool] | None] = {}
        stored = doc.get("last_events") or ([doc["last_event"]] if doc.get("last_event") else [])
        for entry in stored:
            if isinstance(entry, dict):
                version = entry.get("version")
                last[entry["event"]] = (
                    None if version is None else int(version),
                    bool(entry.get("late")),
                )
            else:
                last[str(entry)] = None  # the older form: the event key alone
        order = {k: OrderKey.from_doc(v) for k, v in (doc.get("field_order") or {}).items()}
        return Projection(state, order), state.version, last

    async def load_many(self, case_ids: Sequence[str]) -> dict[str, tuple[Projection, int]]:
        """Several cases in one round trip; missing cases are absent from the answer."""
        out: dict[str, tuple[Projection, int]] = {}
        async for doc in self.cases.find({"_id": {"$in": list(case_ids)}}):
            projection, version, _ = self._projection(doc)
            out[doc["_id"]] = (projection, version)
        return out

    @staticmethod
    def _doc(projection: Projection, applied: Sequence[Applied]) -> Doc:
        assert projection.state is not None
        return {
            "_id": projection.state.case_id,
            "state": projection.state.model_dump(mode="python"),
            "field_order": {k: v.to_doc() for k, v in projection.field_order.items()},
            "last_event": applied[-1][0],
            # Events applied by this write, with the version each made and whether it was
            # late: a crash before publishing is found and healed, each event announced as it
            # was the first time (not under the case's final version, nor judged late against
            # the other events of the same write). A list, not a document keyed by event: an
            # event key may hold a '.', which the database refuses in a field name.
            "last_events": [
                {"event": key, "version": version, "late": late} for key, version, late in applied
            ],
        }

    async def save(self, projection: Projection, *, expected: int, applied: Applied) -> bool:
        """Write when nobody else did meanwhile; False on a lost race."""
        doc = self._doc(projection, [applied])
        if expected == 0:
            try:
                await self.cases.insert_one(doc)
                return True
            except DuplicateKeyError:
                return False
        result = await self.cases.replace_one({"_id": doc["_id"], "state.version": expected}, doc)
        return result.modified_count == 1

    async def save_many(
        self, writes: Sequence[tuple[Projection, int, Sequence[Applied]]]
    ) -> set[str]:
        """Conditional writes of several cases in a few round trips; the case ids that lost a race.

        New cases are inserted (the unique _id refuses a second creator); existing ones are
        replaced only at the version read. Upserts would do both in one go, but FerretDB v1
        spends ~20 ms on each one that inserts.
        """
        lost: set[str] = set()
        new = [self._doc(p, keys) for p, expected, keys in writes if expected == 0]
        if new:
            try:
                await self.cases.insert_many(new, ordered=False)
            except BulkWriteError as exc:
                lost |= {new[i]["_id"] for i in _failed_indexes(exc, only_duplicates=True)}
        old = [(self._doc(p, keys), expected) for p, expected, keys in writes if expected != 0]
        matched = 0
        for start in range(0, len(old), CHUNK):
            chunk = old[start : start + CHUNK]
            result = await self.cases.bulk_write(
                [ReplaceOne({"_id": d["_id"], "state.version": v}, d) for d, v in chunk],
                ordered=False,
            )
            matched += result.matched_count
        if matched < len(old):
            # Some filter missed: someone else wrote those cases. Find which by what is stored:
            # a write won only if the case holds its version and its events. The same events
            # alone are not enough: another instance may have applied them too (the same event
            # over HTTP and Kafka) on top of a newer version, and publishing ours would then
            # announce a version that was never stored.
            wanted = {d["_id"]: (d["state"]["version"], d["last_events"]) for d, _ in old}
            found = self.cases.find(
                {"_id": {"$in": list(wanted)}}, {"last_events": 1, "state.version": 1}
            )
            async for doc in found:
                version, events = wanted[doc["_id"]]
                stored = (doc.get("state") or {}).get("version")
                if stored != version or doc.get("last_events") != events:
                    lost.add(doc["_id"])
        return lost

    async def get(self, case_id: str) -> CaseState | None:
        """The current state of a case."""
        doc = await self.cases.find_one({"_id": case_id}, {"state": 1})
        return validate_own(CaseState, doc["state"], kind="cases.state") if doc else None

    async def by_customer(self, customer_id: str, *, limit: int = 100) -> list[CaseState]:
        """Cases of a customer, newest first."""
        cursor = self.cases.find({"state.customer_ids": customer_id}, {"state": 1}).sort(
            "state.updated_at", DESCENDING
        )
        return [
            validate_own(CaseState, d["state"], kind="cases.state")
            async for d in cursor.limit(limit)
        ]

    async def add_timeline(self, entry: Doc) -> None:
        """Append to a case's timeline (idempotent by _id)."""
        await insert_if_absent(self.timeline, entry)

    async def add_activity(self, entry: Doc) -> None:
        """`add_timeline` for contacts and replies, which are recorded many customers at a
        time: concurrent entries go in as one insert."""
        await self._new_timeline.insert(entry)

    async def add_timeline_many(self, entries: Sequence[Doc]) -> None:
        """Append several entries in one round trip; those already there are left alone."""
        if not entries:
            return
        try:
            await self.timeline.insert_many(list(entries), ordered=False)
        except BulkWriteError as exc:
            _failed_indexes(exc, only_duplicates=True)

    async def timeline_of(
        self, case_id: str, *, start: Position | None = None, limit: int = 500
    ) -> list[Doc]:
        """A case's timeline, oldest first, from `start` (see herald_kit.paging)."""
        where, skip = after({"case_id": case_id}, start)
        cursor = self.timeline.find(where, {"_id": 0}).sort("at", 1).skip(skip)
        return [d async for d in cursor.limit(limit)]

    async def customer_timeline(
        self, case_id: str, customer_id: str, *, limit: int = 50
    ) -> list[Doc]:
        """The newest `limit` entries of a case's timeline as one customer may see them, oldest
        of them first: the case's events, and of contacts and replies only the customer's own
        (others on a shared case are other people's)."""
        query = {"case_id": case_id, "$or": [{"kind": "event"}, {"customer_id": customer_id}]}
        cursor = self.timeline.find(query, {"_id": 0})
        newest = [d async for d in cursor.sort([("at", -1), ("_id", -1)]).limit(limit)]
        return newest[::-1]

    async def take_callback(
        self, link: str, day: date, reply_id: str, *, cap: int, now: datetime
    ) -> bool:
        """Count a call-back (`reply_id`) asked for from a status link (`link`, a digest) on
        `day`; False when the link already asked for `cap` that day. The same reply again is
        not counted again.

        The day has `cap` slots, each a row with its own _id, and a request takes the first
        free one by inserting it: the unique _id gives a slot to one request only however many
        arrive at once, on any replica, with nothing but inserts and lookups by _id, which
        FerretDB v1 and MongoDB both do atomically (a count read before writing would let a
        burst of requests through together)."""
        slots = [f"{link}|{day.isoformat()}|{i}" for i in range(cap)]
        taken = {
            d["_id"]: d.get("reply_id") async for d in self.callbacks.find({"_id": {"$in": slots}})
        }
        if reply_id in taken.values():
            return True
        for slot in slots:
            if slot in taken:
                continue
            row = {"_id": slot, "link": link, "reply_id": reply_id, "at": now}
            if await insert_if_absent(self.callbacks, row):
                return True
        return False

    async def unfinished(
        self, *, since: ClaimPosition, before: datetime, limit: int = 500
    ) -> tuple[list[Doc], ClaimPosition | None]:
        """Events claimed from `since` (a claim time, and the key of the last claim of that
        time already read, if any) until `before` that never finished (a crash mid-way), and
        the position to continue from (None when this page reached `before`).

        Pages go by claim time and key: every claim of one batch has the same time, so a page
        that ended inside a batch of more than `limit` claims would, by time alone, start
        again at that batch's first claim for ever."""
        at, key = since
        where: Doc = {"received_at": {"$gte": at, "$lt": before}}
        if key is not None:
            where = {
                "$or": [
                    {"received_at": at, "_id": {"$gt": key}},
                    {"received_at": {"$gt": at, "$lt": before}},
                ]
            }
        cursor = self.seen.find(where).sort([("received_at", 1), ("_id", 1)])
        page = [d async for d in cursor.limit(limit)]
        finished = {
            d["_id"]
            async for d in self.done.find({"_id": {"$in": [d["_id"] for d in page]}}, {"_id": 1})
        }
        resume = (page[-1]["received_at"], page[-1]["_id"]) if len(page) == limit else None
        return [d for d in page if d["_id"] not in finished], resume

    async def forget_seen(self, *, before: datetime) -> int:
        """Drop dedupe rows older than the retention window (FerretDB has no TTL index)."""
        forgotten = await forget_before(self.seen, before, field="received_at")
        await forget_before(self.done, before)
        return forgotten
