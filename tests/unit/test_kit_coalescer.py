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


async def test_a_cancelled_caller_does_not_leave_the_rest_of_its_batch_waiting() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def run(batch: list[int]) -> list[int | BaseException]:
        started.set()
        await release.wait()  # the database is answering
        return [x * 10 for x in batch]

    # A long window: only the 500th call, which fills the batch, starts the run.
    c: Coalescer[int, int] = Coalescer(run, window=60, max_batch=500)
    others = [asyncio.create_task(c.call(x)) for x in range(499)]
    await asyncio.sleep(0)
    filling = asyncio.create_task(c.call(499))
    await asyncio.wait_for(started.wait(), 5)
    filling.cancel()  # its reader gave up on it (the dispatcher discarding an unused read)
    with pytest.raises(asyncio.CancelledError):
        await filling
    release.set()
    answers = await asyncio.wait_for(asyncio.gather(*others), 5)
    assert answers == [x * 10 for x in range(499)]


async def test_a_run_that_answers_for_too_few_items_fails_every_caller() -> None:
    async def run(batch: list[int]) -> list[int | BaseException]:
        return batch[:-1]

    c: Coalescer[int, int] = Coalescer(run, window=0.001, max_batch=100)
    calls = [asyncio.create_task(c.call(x)) for x in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert results[:2] == [0, 1]
    assert isinstance(results[2], ValueError)
