"""Background upkeep FerretDB can't do for us: expire old dedupe rows, heal half-done events."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from herald_contracts import utc_now
from herald_ingest.adapters.repository import CaseRepository, ClaimPosition
from herald_ingest.processing import Processor, event_from_doc, is_outage
from herald_kit import Every

log = logging.getLogger("herald.ingest")


def _as_utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at  # the database hands back naive UTC


class Sweeper:
    """Runs `sweep` every interval until stopped; each sweep is safe on several replicas."""

    def __init__(
        self,
        repo: CaseRepository,
        processor: Processor,
        *,
        retention_seconds: int,
        recover_after_seconds: int,
        interval_seconds: float,
    ) -> None:
        self.repo = repo
        self.processor = processor
        self.retention = timedelta(seconds=retention_seconds)
        self.recover_after = timedelta(seconds=recover_after_seconds)
        self._every = Every(self.sweep, interval_seconds, name="ingest-sweeper")
        self._since: datetime | None = None

    async def sweep(self) -> tuple[int, int]:
        """One pass: (dedupe rows forgotten, stuck events applied again)."""
        now = utc_now()
        forgotten = await self.repo.forget_seen(before=now - self.retention)
        recovered = 0
        # Claims are looked at once each, oldest first, from where the last pass stopped.
        since: ClaimPosition = (self._since or now - self.retention, None)
        before = now - self.recover_after
        skipped = 0
        while True:
            rows, resume = await self.repo.unfinished(since=since, before=before)
            for row in rows:
                if "event" not in row:
                    continue  # claimed by an older version that did not keep the event
                try:
                    # Processing is idempotent, so two replicas healing one row is harmless.
                    await self.processor.process(event_from_doc(row["event"]))
                except Exception as exc:
                    if is_outage(exc):
                        # Every row would fail alike: the next pass starts again at this one.
                        self._since = _as_utc(row["received_at"])
                        raise
                    # This row's own fault (its case's change too large for the broker, say):
                    # it must not hold back every claim after it, pass after pass.
                    log.warning(
                        "stuck event could not be applied; skipped",
                        extra={"case_id": row.get("case_id"), "error": type(exc).__name__},
                    )
                    skipped += 1
                    continue
                recovered += 1
            if resume is None:
                break
            since = resume
        self._since = before
        if forgotten or recovered or skipped:
            log.info(
                "swept", extra={"forgotten": forgotten, "recovered": recovered, "skipped": skipped}
            )
        return forgotten, recovered

    def start(self) -> None:
        """Sweep in the background."""
        self._every.start()

    async def stop(self) -> None:
        """Stop sweeping."""
        await self._every.stop()
