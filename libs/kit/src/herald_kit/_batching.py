"""Coalesce concurrent single-document operations into one database command.

A handler that runs many keys concurrently (the kit's ConcurrentConsumerLoop) makes the same
few single-document calls for each of them. On FerretDB (and MongoDB) one `insert_many`, one
`find` by `_id: {$in}` or one `bulk_write` costs about as much as one single-document call, so
calls made within a short window are written or read together. Each caller still gets its own
answer (inserted or duplicate, its document), and an error reaches every caller of the batch,
so the consumer's retries and DLQ work as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from herald_contracts import utc_now
from herald_kit._mongo import Doc

DUPLICATE_KEY = 11000
# Recorded counter operations removed by one update at most, and documents whose operations a
# CounterBatcher remembers to remove.
FORGET_PER_WRITE = 500
FORGET_DOCS = 10_000
# How long a recorded counter operation is kept at most: as long as the ledger rows that guard
# the same events (a retry, a redelivery or a replay comes within it). And how often, per
# document, a CounterBatcher reads when its operations were recorded, to remove the old ones.
OPS_KEPT = timedelta(days=30)
OPS_LOOK_EVERY = timedelta(hours=1)
# Attempts at a counter update whose document keeps changing under it (created, or an operation
# removed, between an update and the read that follows it).
WRITE_ROUNDS = 5
K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class Coalescer(Generic[K, R]):
    """Calls within `window` seconds (or `max_batch` of them) run as one `run(batch)`.

    With `max_in_flight`, at most that many `run`s go at once and calls made meanwhile wait
    for the next one (group commit): the busier the database, the larger the batches.

    A run belongs to no caller: it goes on in its own task, so a caller cancelled meanwhile (a
    read nobody awaits any more) gives up only its own answer, and every other caller of the
    batch still gets its result or the run's error.
    """

    def __init__(
        self,
        run: Callable[[list[K]], Awaitable[list[R | BaseException]]],
        *,
        window: float,
        max_batch: int,
        max_in_flight: int | None = None,
    ) -> None:
        self._run = run
        self.window = window
        self.max_batch = max_batch
        self._pending: list[tuple[K, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(max_in_flight) if max_in_flight else None
        # The runs going on: the event loop keeps only weak references to tasks.
        self._runs: set[asyncio.Task[None]] = set()

    async def call(self, item: K) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if len(self._pending) >= self.max_batch:
            # Without a slot to wait for, the batch is cut here, at `max_batch` calls, not when
            # the task first runs (by which time more calls may have joined it).
            batch = None if self._slots else self._take()
            self._spawn(self._flush(batch))
        elif self._flusher is None:
            self._flusher = self._spawn(self._flush_later())
        return await fut

    def _spawn(self, op: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(op)
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        return task

    def _take(self) -> list[tuple[K, asyncio.Future[R]]]:
        batch, self._pending = self._pending, []
        return batch

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.window)
        await self._flush(flusher=True)

    async def _flush(
        self, batch: list[tuple[K, asyncio.Future[R]]] | None = None, *, flusher: bool = False
    ) -> None:
        async with self._slots or contextlib.nullcontext():
            if flusher:
                # Calls made while waiting for a slot joined this batch (no new flusher).
                self._flusher = None
            if batch is None:
                batch = self._take()
            if batch:
                await self._settle(batch)

    async def _settle(self, batch: list[tuple[K, asyncio.Future[R]]]) -> None:
        """Run one batch and answer every caller of it, however the run ends."""
        try:
            results = await self._run([item for item, _ in batch])
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():  # its caller was cancelled
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        except BaseException as exc:
            # An outage: every waiter sees it, and its consumer retries. A cancelled run (the
            # event loop shutting down) cancels the callers, so none is left waiting.
            for _, fut in batch:
                if fut.done():
                    continue
                if isinstance(exc, Exception):
                    fut.set_exception(exc)
                else:
                    fut.cancel()
            if not isinstance(exc, Exception):
                raise


class InsertBatcher:
    """Concurrent insert-if-absent calls as one unordered `insert_many`."""

    def __init__(
        self, rows: AsyncCollection[Doc], *, window: float = 0.002, max_batch: int = 500
    ) -> None:
        self.rows = rows
        self._c: Coalescer[Any, bool] = Coalescer(self._insert, window=window, max_batch=max_batch)

    async def insert(self, doc: Doc) -> bool:
        """True when inserted, False when a row with this _id already exists."""
        return await self._c.call(doc)

    async def _insert(self, docs: list[Doc]) -> list[bool | BaseException]:
        try:
            await self.rows.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            results: list[bool | BaseException] = [True] * len(docs)
            for e in exc.details.get("writeErrors", []):
                # A duplicate _id is an answer (already there); any other error is the caller's.
                results[int(e["index"])] = False if e.get("code") == DUPLICATE_KEY else exc
            return results
        return [True] * len(docs)


class IdLoader:
    """Concurrent `find_one({_id})` calls as one `find({_id: {$in: [...]}})`."""

    def __init__(
        self,
        rows: AsyncCollection[Doc],
        *,
        projection: Doc | None = None,
        window: float = 0.002,
        max_batch: int = 500,
    ) -> None:
        self.rows = rows
        self.projection = projection
        self._c: Coalescer[Any, Doc | None] = Coalescer(
            self._load, window=window, max_batch=max_batch
        )

    async def get(self, key: Any) -> Doc | None:
        """The document with this _id, or None."""
        return await self._c.call(key)

    async def _load(self, keys: list[Any]) -> list[Doc | BaseException | None]:
        wanted = list(dict.fromkeys(keys))
        found = {
            d["_id"]: d async for d in self.rows.find({"_id": {"$in": wanted}}, self.projection)
        }
        return [found.get(k) for k in keys]


class UpdateBatcher:
    """Concurrent `update_one` calls as one unordered `bulk_write` (no per-call counts)."""

    def __init__(
        self, rows: AsyncCollection[Doc], *, window: float = 0.002, max_batch: int = 200
    ) -> None:
        self.rows = rows
        self._c: Coalescer[Any, None] = Coalescer(self._write, window=window, max_batch=max_batch)

    async def update(self, flt: Doc, change: Doc, *, upsert: bool = False) -> None:
        """Apply one update with the batch; an error of the batch is raised to every caller."""
        await self._c.call(UpdateOne(flt, change, upsert=upsert))

    async def _write(self, ops: Sequence[UpdateOne]) -> list[BaseException | None]:
        await self.rows.bulk_write(list(ops), ordered=False)
        return [None] * len(ops)


_Inc = tuple[tuple[str, int], ...]
# One call: the increments, its operation (or None), whether its record is kept, and the
# operations whose records to remove.
_Count = tuple[_Inc, str | None, bool, tuple[str, ...]]


class CounterBatcher:
    """Concurrent `$inc` upserts, merged per `_id`: the increments of one window add up into
    one update per document, so a hot counter document is written once, not once per event.

    An increment may name its operation (`op`, the caller's guard key): the update then records
    the operation in the document (`ops.<hash>`, the time it was recorded) and applies only
    where it is not recorded yet, in the same single-document write. An update the database
    applied but whose answer was lost (a dropped connection, a stepping-down primary) is
    thereby not applied again when the caller retries it, here or on another replica. Where one
    operation of a merged update is found recorded already, the update is made again without
    it. A recorded operation is removed by this batcher's next update of the document, once its
    caller has had the answer (a retry comes before it: the caller's guard keeps a counted
    event from counting again); with `keep`, it stays until a later call names it in `forget`
    (a caller that may apply it again after the answer, as a resumed fan-out does).

    What a batcher would have removed is lost when its process stops (or past `FORGET_DOCS`
    documents): once an hour per document it updates, it reads when the document's operations
    were recorded, and its next updates remove those recorded more than `ops_kept` ago, by
    whichever replica. A document keeps no more than that period's records, however often its
    writers restart.
    """

    def __init__(
        self,
        rows: AsyncCollection[Doc],
        *,
        window: float = 0.002,
        max_batch: int = 500,
        ops_kept: timedelta = OPS_KEPT,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.rows = rows
        self.ops_kept = ops_kept
        self.clock = clock
        self._c: Coalescer[Any, None] = Coalescer(self._write, window=window, max_batch=max_batch)
        # Per document: recorded operations to remove (their callers have their answer, or
        # they are older than `ops_kept`).
        self._done: dict[Any, set[str]] = {}
        # Per document: when this batcher last read the times of its recorded operations.
        self._looked: OrderedDict[Any, datetime] = OrderedDict()

    async def add(
        self,
        key: Any,
        inc: dict[str, int],
        *,
        op: str | None = None,
        keep: bool = False,
        forget: Sequence[str] = (),
    ) -> None:
        """Add these increments to the document `key` (created when absent), once per `op`;
        remove the records of the operations in `forget`."""
        await self._c.call((key, (tuple(sorted(inc.items())), op, keep, tuple(forget))))

    async def _write(self, items: list[tuple[Any, _Count]]) -> list[BaseException | None]:
        per_doc: dict[Any, list[_Count]] = {}
        for key, count in items:
            per_doc.setdefault(key, []).append(count)
        keys = list(per_doc)
        outcomes = await asyncio.gather(
            *(self._write_one(k, per_doc[k]) for k in keys), return_exceptions=True
        )
        failed = {
            k: out for k, out in zip(keys, outcomes, strict=True) if isinstance(out, BaseException)
        }
        for out in failed.values():
            if not isinstance(out, Exception):
                raise out  # a cancellation: the Coalescer cancels every caller
        return [failed.get(key) for key, _ in items]

    async def _write_one(self, key: Any, items: list[_Count]) -> None:
        """Apply the increments of one document, those of a named operation once."""
        now = self.clock()
        await self._look(key, now)
        pending = [(inc, None if op is None else _op_field(op)) for inc, op, _, _ in items]
        answered = {_op_field(op) for _, op, keep, _ in items if op is not None and not keep}
        asked = {_op_field(op) for _, _, _, forget in items for op in forget}
        forgot: set[str] = set()
        rounds = 0
        while True:
            rounds += 1
            if rounds > WRITE_ROUNDS:
                raise RuntimeError("counter document changed under every attempt to update it")
            fields = {f for _, f in pending if f is not None}
            inc: dict[str, int] = {}
            for part, _ in pending:
                for name, n in part:
                    inc[name] = inc.get(name, 0) + n
            auto = sorted(self._done.get(key, set()) - fields - asked)[:FORGET_PER_WRITE]
            forget = (asked - fields) | set(auto)
            change: Doc = {}
            if inc:
                change["$inc"] = inc
            if fields:
                change["$set"] = dict.fromkeys(fields, now)
            if forget:
                change["$unset"] = dict.fromkeys(forget, "")
            if not inc and not fields:
                # Nothing (left) to count: only records to remove, where the document is.
                if forget:
                    await self.rows.update_one({"_id": key}, change)
                    forgot = forget
                break
            flt: Doc = {"_id": key, **{f: {"$exists": False} for f in fields}}
            if (await self.rows.update_one(flt, change)).matched_count:
                forgot = forget
                break
            # Not matched: the document is absent, or an operation of the lot is recorded.
            doc = await self.rows.find_one({"_id": key}, dict.fromkeys(fields, 1) or {"_id": 1})
            if doc is None:
                try:
                    await self.rows.update_one(flt, change, upsert=True)
                except DuplicateKeyError:
                    continue  # created meanwhile (by another replica): read it again
                forgot = forget
                break
            recorded = {f for f in fields if f.split(".", 1)[1] in (doc.get("ops") or {})}
            # Those were applied before (their answer was lost): the rest is applied again.
            # None recorded: one was removed meanwhile, or the document just created.
            pending = [(i, f) for i, f in pending if f not in recorded]
        done = self._done.setdefault(key, set())
        done.difference_update(forgot)
        done.update(answered)
        if not done:
            del self._done[key]
        while len(self._done) > FORGET_DOCS:
            # The oldest documents' recorded operations stay (a few bytes each) until a look
            # finds them old.
            del self._done[next(iter(self._done))]

    async def _look(self, key: Any, now: datetime) -> None:
        """Once per `OPS_LOOK_EVERY` and document, find the operations recorded in it more than
        `ops_kept` ago, for this update and the next ones to remove.

        They are those another process, or this one before it restarted, left: one read by
        `_id` an hour per document written, where a sweep would read every document (neither
        FerretDB v1 nor MongoDB can select the fields of `ops` by their value)."""
        last = self._looked.get(key)
        if last is not None and now - last < OPS_LOOK_EVERY:
            return
        doc = await self.rows.find_one({"_id": key}, {"ops": 1})
        self._looked[key] = now
        self._looked.move_to_end(key)
        while len(self._looked) > FORGET_DOCS:
            self._looked.popitem(last=False)
        before = now - self.ops_kept
        old = {
            f"ops.{name}"
            for name, at in ((doc or {}).get("ops") or {}).items()
            if _recorded_at(at) < before
        }
        if old:
            self._done.setdefault(key, set()).update(old)


def _recorded_at(value: Any) -> datetime:
    """When an operation was recorded (its field's value); long ago for a record without a
    time."""
    if not isinstance(value, datetime):
        return datetime.min.replace(tzinfo=UTC)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _op_field(op: str) -> str:
    """The document field recording an operation (a hash: an id may hold a dot or a '$')."""
    return "ops." + hashlib.blake2b(op.encode(), digest_size=10).hexdigest()


class RecentKeys:
    """The last `size` keys seen, oldest forgotten first: what a consumer already wrote lately,
    so a repeat (a message's second status, say) can skip re-reading or re-writing it."""

    def __init__(self, size: int) -> None:
        self._keys: OrderedDict[Any, None] = OrderedDict()
        self._size = size

    def __contains__(self, key: object) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        return False

    def add(self, key: Any) -> None:
        """Remember a key (forgetting the oldest beyond the size)."""
        self._keys[key] = None
        self._keys.move_to_end(key)
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
