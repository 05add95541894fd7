"""Resident memory (RSS from /proc) of each service process at idle and at saturation."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from bench_e2e import API_KEY, arrivals, start_stack
from chaos.scenario import Scenario

from benchlib import BenchEnv, Figure
from herald_devstack import Stack


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (VmRSS), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def sample(stack: Stack) -> dict[str, float]:
    """RSS of every service now."""
    return {name: rss_mb(run.process.pid) for name, run in stack.running.items()}


async def bench(env: BenchEnv) -> list[Figure]:
    """Idle after start-up settles; the peak while a saturating load runs through."""
    n = env.n(1_000)
    ns = await env.namespace(partitions=6)
    stack = await asyncio.to_thread(start_stack, env, ns, "bench-memory")
    figures: list[Figure] = []
    try:
        await asyncio.sleep(10)  # let start-up allocations settle
        idle = sample(stack)
        scenario = Scenario(stack, size=n, api_key=API_KEY, suppress_every=0)
        await scenario.seed()
        await scenario.wait_views()
        peak = dict(idle)

        async def watch() -> None:
            while True:
                for name, mb in sample(stack).items():
                    peak[name] = max(peak[name], mb)
                await asyncio.sleep(0.5)

        watcher = asyncio.create_task(watch())
        try:
            await scenario.post_events(range(n), rate=None, batch=100, concurrency=4)
            await arrivals(scenario, range(n), within=600)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        load = f"peak while {n:,} events ran through, as fast as ingest accepts"
        for name in sorted(idle):
            figures.append(Figure("memory", f"{name} RSS idle", idle[name], "MB", "target ≤ 150"))
            figures.append(Figure("memory", f"{name} RSS saturation", peak[name], "MB", load))
    finally:
        await asyncio.to_thread(stack.stop)
    return figures
