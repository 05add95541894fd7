"""A schedule leader whose database goes away keeps its event loop running: APScheduler's job
store blocks the thread that calls it, and that thread is never the event loop's (the API, the
readiness probe, timers and Kafka heartbeats share that loop)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import pytest
from apscheduler.jobstores.memory import MemoryJobStore
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from herald_scheduler.messaging.schedules import ScheduleRunner, _noop

# How long each job store call hangs while the database is away (PyMongo's own default is 30 s).
HANG_SECONDS = 5.0
TICK_SECONDS = 0.01


class _Away(MemoryJobStore):  # type: ignore[misc]
    """A job store whose database can go away: every call then hangs, and fails."""

    def __init__(self) -> None:
        super().__init__()
        self.away = threading.Event()
        self.back = threading.Event()  # ends the hang early, for the test's clean-up

    def _reach(self) -> None:
        if self.away.is_set():
            self.back.wait(HANG_SECONDS)
            raise ServerSelectionTimeoutError("the database did not answer")

    def _hanging(name: str) -> Callable[..., Any]:  # type: ignore[misc]
        def call(self: _Away, *args: Any, **kwargs: Any) -> Any:
            self._reach()
            return getattr(MemoryJobStore, name)(self, *args, **kwargs)

        return call

    lookup_job = _hanging("lookup_job")
    get_due_jobs = _hanging("get_due_jobs")
    get_next_run_time = _hanging("get_next_run_time")
    get_all_jobs = _hanging("get_all_jobs")
    add_job = _hanging("add_job")
    update_job = _hanging("update_job")
    remove_job = _hanging("remove_job")


class _Campaigns:
    async def active_schedules(self) -> list[dict[str, Any]]:
        definition = {
            "name": "n",
            "topic": "reminders",
            "trigger": {"kind": "schedule", "cron": "0 9 * * *", "time_zone": "UTC"},
            "messages": {"sms": {"en": {"body": "hi"}}},
        }
        return [{"_id": "c1", "version": 1, "status": "active", "definition": definition}]


class _Fires:
    async def due_markers(self) -> list[dict[str, Any]]:
        return []

    async def unfinished(self) -> list[dict[str, Any]]:
        return []


class _Lease:
    holder = "replica-1"

    async def acquire(self, *, now: Any) -> bool:
        return True

    async def release(self) -> None:
        return None


def _runner(mongo_uri: str = "mongodb://unused") -> ScheduleRunner:
    return ScheduleRunner(
        campaigns=cast(Any, _Campaigns()),
        fires=cast(Any, _Fires()),
        fanout=cast(Any, None),
        lease=cast(Any, _Lease()),
        mongo_uri=mongo_uri,
        mongo_db="unused",
        tick_seconds=1,
    )


async def test_the_event_loop_keeps_running_while_the_job_store_database_is_away() -> None:
    runner = _runner()
    store = _Away()
    runner._job_store = lambda: store  # type: ignore[method-assign]
    await runner.tick()  # takes the lease, starts APScheduler, schedules the campaign
    assert runner.job_ids() == {"c1"}

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(TICK_SECONDS)
            ticks += 1

    store.away.set()
    ticking = asyncio.create_task(ticker())
    try:
        # The next tick reconciles the jobs: a job store read that hangs HANG_SECONDS and fails
        # (and APScheduler's own wake-up meets the same database).
        with pytest.raises(ServerSelectionTimeoutError):
            await runner.tick()
    finally:
        ticking.cancel()
        store.back.set()
        await runner._step_down()
    # A loop held by the job store for those seconds ticks hardly at all; a free one some
    # HANG_SECONDS / TICK_SECONDS times. A tenth of that leaves room for a loaded machine.
    assert ticks >= HANG_SECONDS / TICK_SECONDS / 10, ticks


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_the_job_store_gives_up_on_an_unreachable_database_in_seconds() -> None:
    """Not after PyMongo's 30 s default: APScheduler's wake-ups and the step-down wait for it."""
    runner = _runner(f"mongodb://127.0.0.1:{_closed_port()}/?directConnection=true")
    store = runner._job_store()
    try:
        with pytest.raises(ServerSelectionTimeoutError):
            await asyncio.wait_for(asyncio.to_thread(store.get_all_jobs), timeout=15)
    finally:
        assert runner._sync_client is not None
        runner._sync_client.close()


class _Blip(MemoryJobStore):  # type: ignore[misc]
    """A job store whose next write after a fire fails once (the database answered too late)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next_update = threading.Event()
        self.failed = threading.Event()

    def update_job(self, job: Any) -> None:
        if self.fail_next_update.is_set():
            self.fail_next_update.clear()
            self.failed.set()
            raise AutoReconnect("the database did not answer within the socket timeout")
        super().update_job(job)


async def _until(check: Callable[[], bool], seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def test_campaigns_keep_firing_after_a_job_store_write_failed_once() -> None:
    """APScheduler's thread moves a fired job past its time in the job store; that write failing
    once must not end the thread, or the leader would hold its lease and never fire again."""
    runner = _runner()
    store = _Blip()
    runner._job_store = lambda: store  # type: ignore[method-assign]
    fires: list[datetime] = []
    runner._start_fire = lambda fire_id, cid, t: fires.append(t)  # type: ignore[method-assign]
    await runner._take_over()
    try:
        assert runner._scheduler is not None
        runner._scheduler.add_job(_noop, "interval", seconds=0.2, id="c1", name="v1")
        assert await _until(lambda: len(fires) >= 2, 5)
        store.fail_next_update.set()
        assert await _until(store.failed.is_set, 5)
        after_failure = len(fires)
        assert await _until(lambda: len({*fires}) >= after_failure + 3, 5), fires
    finally:
        await asyncio.wait_for(runner._step_down(), 10)
