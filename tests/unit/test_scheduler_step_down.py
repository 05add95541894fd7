"""A replica that steps down leaves no fire or fan-out running behind it; a leader fires what a
dead holder was handed and never recorded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from herald_contracts import utc_now
from herald_scheduler.messaging.schedules import MISFIRE_GRACE, ScheduleRunner

DEFINITION = {
    "name": "n",
    "topic": "service-updates",
    "trigger": {"kind": "schedule", "cron": "0 9 * * *", "time_zone": "UTC"},
    "messages": {"sms": {"en": {"body": "hello"}}},
}


class _Campaigns:
    """A campaign read that waits until the test lets it answer."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.reading = asyncio.Event()

    async def get(self, campaign_id: str) -> dict[str, Any]:
        self.reading.set()
        await self.answer.wait()
        return {"_id": campaign_id, "status": "active", "version": 1, "definition": DEFINITION}


class _Fires:
    """No fire recorded yet; recording one succeeds."""

    def __init__(self, due: list[dict[str, Any]] | None = None) -> None:
        self.begun: list[str] = []
        self.settled_ids: list[str] = []
        self.due = due or []

    async def due_markers(self) -> list[dict[str, Any]]:
        return [m for m in self.due if m["_id"] not in self.settled_ids]

    async def get(self, fire_id: str) -> None:
        return None

    async def begin(self, row: dict[str, Any]) -> bool:
        self.begun.append(row["_id"])
        return True

    async def settled(self, fire_id: str) -> None:
        self.settled_ids.append(fire_id)


class _FanOut:
    """Counts fan-outs running; each runs until cancelled."""

    def __init__(self) -> None:
        self.running = 0
        self.started = 0

    async def audience_ends(self, *, cases: bool = False) -> dict[str, int]:
        return {"0": 0}

    async def run(self, fire_id: str) -> int:
        self.started += 1
        self.running += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.running -= 1
        return 0


def _runner(campaigns: _Campaigns, fanout: _FanOut, fires: _Fires) -> ScheduleRunner:
    return ScheduleRunner(
        campaigns=cast(Any, campaigns),
        fires=cast(Any, fires),
        fanout=cast(Any, fanout),
        lease=cast(Any, None),
        mongo_uri="mongodb://unused",
        mongo_db="unused",
        tick_seconds=1,
    )


async def test_a_fire_in_flight_at_step_down_is_recorded_but_starts_no_fan_out() -> None:
    campaigns, fanout, fires = _Campaigns(), _FanOut(), _Fires()
    runner = _runner(campaigns, fanout, fires)
    runner.leading = True
    runner._spawn("c1|resumed")  # an unfinished fire the leader resumed
    runner._on_fire("c1", datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    await campaigns.reading.wait()  # the fire is reading its campaign
    await asyncio.sleep(0)
    assert fanout.running == 1
    stepping_down = asyncio.create_task(runner._step_down())
    await asyncio.sleep(0.01)
    # The step-down waits for the fire: APScheduler has moved past its time already, so a fire
    # cut off before its row is written would never happen.
    assert not stepping_down.done()
    campaigns.answer.set()
    await stepping_down
    assert fires.begun == ["c1|fire:2026-11-25T12:00:00Z"]  # the next leader resumes it
    assert fires.settled_ids == fires.begun  # recorded: no due marker is left to fire it again
    # It started no fan-out (with its own Kafka clients) that no stop would ever reach, and the
    # resumed fan-out is stopped.
    assert fanout.running == 0 and fanout.started == 1
    assert not runner._firing and not runner._fanouts


async def test_a_standby_spawns_nothing() -> None:
    fanout = _FanOut()
    runner = _runner(_Campaigns(), fanout, _Fires())
    runner._spawn("c1|t")
    await asyncio.sleep(0)
    assert fanout.started == 0 and not runner._fanouts


async def test_due_markers_are_fired_unless_past_the_misfire_grace() -> None:
    """What a killed holder left: fired by the next leader, once, unless it is too late."""
    now = utc_now().replace(microsecond=0)
    recent, stale = now - timedelta(minutes=5), now - MISFIRE_GRACE - timedelta(seconds=1)

    def marker(t: datetime) -> dict[str, Any]:
        return {"_id": f"c1|fire:{t:%Y-%m-%dT%H:%M:%SZ}", "campaign_id": "c1", "scheduled": t}

    campaigns, fanout = _Campaigns(), _FanOut()
    fires = _Fires([marker(recent), marker(stale)])
    runner = _runner(campaigns, fanout, fires)
    runner.leading = True
    campaigns.answer.set()
    await runner._fire_due()
    await runner._fire_due()  # the next tick, while the fire is in flight: not fired twice
    await asyncio.gather(*runner._firing.values())
    assert fires.begun == [marker(recent)["_id"]]
    assert sorted(fires.settled_ids) == sorted([marker(stale)["_id"], marker(recent)["_id"]])
    assert fanout.started == 1
    await runner._step_down()


class _Lease:
    def __init__(self) -> None:
        self.released = False

    async def release(self) -> None:
        self.released = True


async def test_a_leader_whose_stop_is_cancelled_still_hands_the_lease_over() -> None:
    """A standby takes over at once instead of waiting out the lease, and the cancellation
    reaches the caller instead of being swallowed."""
    runner = _runner(_Campaigns(), _FanOut(), _Fires())
    lease = _Lease()
    runner.lease = cast(Any, lease)
    runner.leading = True

    async def tick_finishing_a_write() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.2)  # a write the tick completes before it ends

    runner._task = asyncio.create_task(tick_finishing_a_write())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(runner.stop())
    await asyncio.sleep(0.05)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stopping, timeout=5)
    assert runner._task.done()
    assert lease.released and not runner.leading
