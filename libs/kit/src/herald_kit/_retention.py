"""Forgetting rows once nothing can ask for them again, where a TTL index is unavailable.

FerretDB v1 has none (ARCHITECTURE.md: a sweeper expires old rows), so a collection that gains a
row per request or message would otherwise grow for ever. A service registers such collections
with `Runtime.forget_old`; one background task per replica then deletes their rows whose `at` is
older than each collection's retention, found through an index on `at` (on MongoDB a sweep of a
month of rows would otherwise read every one of them, every interval).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from herald_contracts import utc_now
from herald_kit._kafka import cancel_and_wait
from herald_kit._metrics import BACKGROUND_RUNS, ROWS_FORGOTTEN
from herald_kit._mongo import Doc

log = logging.getLogger("herald.retention")
# Every runs more than retention (the preferences republisher too): its failures log as such.
background_log = logging.getLogger("herald.background")


async def forget_before(
    rows: AsyncCollection[Doc],
    before: datetime,
    *,
    field: str = "at",
    where: Doc | None = None,
    batch: int = 1000,
) -> int:
    """Delete the rows whose `field` is before `before` (and that match `where`, if given), a
    batch at a time; how many went.

    The ids are found first and deleted by `_id`: FerretDB v1 pushes only `_id` filters down, and
    a delete by any other field holds the collection while it reads all of it.
    """
    forgotten = 0
    old = {**(where or {}), field: {"$lt": before}}
    while True:
        cursor = rows.find(old, {"_id": 1}).limit(batch)
        ids = [doc["_id"] async for doc in cursor]
        if not ids:
            return forgotten
        result = await rows.delete_many({"_id": {"$in": ids}})
        forgotten += int(result.deleted_count)
        ROWS_FORGOTTEN.labels(rows.name).inc(result.deleted_count)
        if len(ids) < batch:
            return forgotten


@dataclass(frozen=True, slots=True)
class Kept:
    """A collection whose rows are forgotten `keep` after their `at`."""

    collection: str
    keep: timedelta


class Every:
    """Runs `work` every interval in the background until stopped (the first run after one
    interval); a failed run is logged and the next one retries."""

    def __init__(
        self,
        work: Callable[[], Awaitable[object]],
        interval_seconds: float,
        *,
        name: str,
        jitter: float = 0.0,
    ) -> None:
        self.work = work
        self.interval = interval_seconds
        self.name = name
        self.jitter = jitter  # each wait is the interval times 1 ± jitter
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start running in the background."""
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        """Stop running (a run under way is cancelled)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        while True:
            spread = random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 - jitter
            await asyncio.sleep(self.interval * spread)
            try:
                await self.work()
            except asyncio.CancelledError:
                raise
            except Exception:
                BACKGROUND_RUNS.labels(self.name, "failed").inc()
                background_log.exception(
                    "background run failed; the next one retries", extra={"task": self.name}
                )
            else:
                BACKGROUND_RUNS.labels(self.name, "ok").inc()


class Retention:
    """Sweeps every interval (with jitter) until stopped; a sweep is safe on several replicas."""

    def __init__(
        self,
        db: AsyncDatabase[Doc],
        plan: list[Kept],
        *,
        interval_seconds: float,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.db = db
        self.plan = plan
        self.clock = clock
        # Replicas started together do not sweep together.
        self._every = Every(self.sweep, interval_seconds, name="retention", jitter=0.1)

    async def ensure_indexes(self) -> None:
        """An index on `at` in every collection swept, so a sweep reads only the old rows."""
        for kept in self.plan:
            await self.db[kept.collection].create_index([("at", 1)])

    async def sweep(self) -> dict[str, int]:
        """One pass over every collection: rows forgotten, by collection."""
        now = self.clock()
        forgotten = {
            kept.collection: await forget_before(self.db[kept.collection], now - kept.keep)
            for kept in self.plan
        }
        if any(forgotten.values()):
            log.info("forgot old rows", extra={"forgotten": forgotten})
        return forgotten

    def start(self) -> None:
        """Sweep in the background (the first sweep after one interval)."""
        self._every.start()

    async def stop(self) -> None:
        """Stop sweeping."""
        await self._every.stop()
