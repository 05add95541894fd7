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
