"""The kit's Coalescer: concurrent calls share one run, each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from herald_kit import Coalescer


async def test_calls_made_while_a_run_is_in_flight_join_the_next_run() -> None:
    runs: list[list[int]] = []
    release = asyncio.Event()

    async def run(batch: list[int]) -> list[int | BaseException]:
        runs.append(batch)
        if len(runs) == 1:
            await release.wait()  # the database is busy with the first batch
        return [x * 10 for x in batch]

    c: Coalescer[int, int] = Coalescer(run, window=0.001, max_batch=100, max_in_flight=1)
    first = asyncio.create_task(c.call(1))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(c.call(x)) for x in (2, 3, 4)]
    await asyncio.sleep(0.01)
    assert runs == [[1]]  # the later calls wait for the slot instead of running beside it
    release.set()
    assert await first == 10
    assert [await t for t in later] == [20, 30, 40]
    assert runs == [[1], [2, 3, 4]]


async def test_an_error_for_one_item_reaches_only_its_caller() -> None:
    async def run(batch: list[int]) -> list[int | BaseException]:
        return [ValueError("bad") if x < 0 else x for x in batch]

    c: Coalescer[int, int] = Coalescer(run, window=0.001, max_batch=100, max_in_flight=2)
    good, bad = asyncio.create_task(c.call(5)), asyncio.create_task(c.call(-1))
    assert await good == 5
    with pytest.raises(ValueError, match="bad"):
        await bad
