"""Forget the dispatcher's per-message rows once nothing can ask for them again.

FerretDB v1 has no TTL index (ARCHITECTURE.md: where a TTL index is unavailable, a sweeper
expires old rows), so each collection below would otherwise grow by a row per request or message
for ever. A row is forgotten when its `at` is older than the collection's retention:

- `request_claims`, `attempts`, `last_contents` after `LEDGER_RETENTION_SECONDS` (30 days): a
  claim only refuses a redelivered request, and topics keep records 7 days; an attempt only
  answers a status or a reply to its message; the last content only matters for a day.
- `decisions` after `DECISION_RETENTION_SECONDS` (90 days): the explain API's answers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta

from pymongo.asynchronous.collection import AsyncCollection

from herald_contracts import utc_now
from herald_dispatcher.adapters.store import Decisions, Ledger
from herald_dispatcher.config import Settings
from herald_kit import Doc, cancel_and_wait

log = logging.getLogger("herald.dispatcher")


async def forget_before(rows: AsyncCollection[Doc], before: datetime, *, batch: int = 1000) -> int:
    """Delete rows whose `at` is before `before`, a batch at a time; how many were deleted.

    The ids are found first and deleted by `_id`: FerretDB v1 pushes only `_id` filters down,
    and a delete by any other field holds the collection while it reads all of it.
    """
    forgotten = 0
    while True:
        cursor = rows.find({"at": {"$lt": before}}, {"_id": 1}).limit(batch)
        ids = [doc["_id"] async for doc in cursor]
        if not ids:
            return forgotten
        result = await rows.delete_many({"_id": {"$in": ids}})
        forgotten += int(result.deleted_count)
        if len(ids) < batch:
            return forgotten


class Retention:
    """Sweeps every interval (with jitter) until stopped; a sweep is safe on several replicas."""

    def __init__(
        self,
        decisions: Decisions,
        ledger: Ledger,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        ledger_keep = timedelta(seconds=settings.ledger_retention_seconds)
        self.plan: list[tuple[AsyncCollection[Doc], timedelta]] = [
            (decisions.claims, ledger_keep),
            (ledger.attempts, ledger_keep),
            (ledger.contents, ledger_keep),
            (decisions.decisions, timedelta(seconds=settings.decision_retention_seconds)),
        ]
        self.interval = settings.retention_interval_seconds
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> dict[str, int]:
        """One pass over every collection: rows forgotten, by collection."""
        now = self.clock()
        forgotten = {rows.name: await forget_before(rows, now - keep) for rows, keep in self.plan}
        if any(forgotten.values()):
            log.info("forgot old rows", extra={"forgotten": forgotten})
        return forgotten

    def start(self) -> None:
        """Sweep in the background (the first sweep after one interval)."""
        self._task = asyncio.create_task(self._loop(), name="dispatcher-retention")

    async def stop(self) -> None:
        """Stop sweeping."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        while True:
            # Replicas started together do not sweep together.
            await asyncio.sleep(self.interval * random.uniform(0.9, 1.1))  # noqa: S311 - jitter
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention sweep failed; the next one retries")
