"""A periodic background task (the retention sweep) survives a failed run, and its runs are
counted by outcome for the HeraldBackgroundTaskFailing alert."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from herald_kit import Every


def _runs(task: str, outcome: str) -> float:
    labels = {"task": task, "outcome": outcome}
    return REGISTRY.get_sample_value("herald_background_runs_total", labels) or 0.0


async def test_a_failed_run_is_counted_and_the_next_run_retries() -> None:
    calls: list[int] = []
    done = asyncio.Event()

    async def work() -> None:
        calls.append(len(calls))
        if len(calls) <= 2:
            raise ConnectionError("database unreachable")
        done.set()

    every = Every(work, 0.01, name="unit-sweep")
    every.start()
    try:
        await asyncio.wait_for(done.wait(), timeout=5)
    finally:
        await every.stop()
    assert _runs("unit-sweep", "failed") == 2
    assert _runs("unit-sweep", "ok") >= 1
    # Stopped: no run after it.
    ran = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == ran


async def test_the_preferences_republisher_outlives_an_unforeseen_error() -> None:
    """It publishes the snapshots (a STOP among them) whose first flush failed: one error it
    did not expect must not end it for the life of the process."""
    from herald_preferences.messaging.outbox import Outbox

    class Markers:
        """The repository's read of due markers: a malformed row's error, then nothing due."""

        def __init__(self) -> None:
            self.reads = 0

        async def due(self, *, older_than: object) -> list[object]:
            self.reads += 1
            if self.reads == 1:
                raise KeyError("n")
            return []

    markers = Markers()
    failed = _runs("preferences-republisher", "failed")
    outbox = Outbox(markers, producer=None)  # type: ignore[arg-type]
    outbox.start(interval=0.01)
    try:
        for _ in range(500):
            if markers.reads >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        await outbox.stop()
    assert markers.reads >= 3
    assert _runs("preferences-republisher", "failed") - failed == 1
