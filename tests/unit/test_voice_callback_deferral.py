"""A deferred call-back ends in a call inside the calling hours or in a reported failure, however
late or early its timer's re-publication is handled; and a call never goes after its expiry.

The voice-sender's own code on in-memory stand-ins: a ledger, a producer, a provider, a clock,
and a scheduler that keeps one timer per id (a replayed id is dropped, as `insert_if_absent`
drops it) and re-publishes the reply when a timer is due.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import herald_voice_sender.calling as calling_mod
from herald_contracts import DeliveryStatus, EngagementReply, TimerRequest
from herald_kit import Pacer
from herald_voice_sender.adapters.provider import Placed
from herald_voice_sender.calling import Call, VoiceCalling
from herald_voice_sender.domain.window import CallingHours, permits, zones_for

NUMBER = "+12015550123"  # New York
HOURS = CallingHours("08:00", "21:00")
# 07:00 in New York, an hour before the calling hours open.
EARLY = datetime(2026, 6, 1, 11, 0, tzinfo=UTC)
OPENING = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@dataclass
class Clock:
    """The voice-sender host's clock; `sleep` moves it."""

    now: datetime

    async def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def monotonic(self) -> float:
        return self.now.timestamp()


class Ledger:
    """The call ledger's rules in memory: claim, claim-guarded 'sending', settled rows kept."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    async def claim(
        self, mid: str, *, now: datetime, meta: dict[str, Any] | None = None
    ) -> tuple[bool, dict[str, Any] | None]:
        row = self.rows.get(mid)
        if row is None or row["status"] in ("queued", "retry"):
            self.rows[mid] = {**(row or {}), "_id": mid, "status": "queued", "at": now}
            self.rows[mid].update(meta or {})
            return True, None
        return False, copy.deepcopy(row)

    async def start_sending(self, mid: str, *, claim: str, now: datetime) -> bool:
        row = self.rows[mid]
        if row["status"] != "queued" or row.get("claim") != claim:
            return False
        row.update(status="sending", sending_at=now)
        return True

    async def set(self, mid: str, status: str, **fields: Any) -> None:
        self.rows[mid].update(status=status, **fields)

    async def by_provider_id(self, pid: str) -> dict[str, Any] | None:
        return next((r for r in self.rows.values() if r.get("provider_id") == pid), None)

    async def stop_of(self, number_key: str) -> dict[str, Any] | None:
        return None  # no stop chosen at any number here


@dataclass
class Producer:
    events: list[tuple[str, Any]] = field(default_factory=list)

    async def publish(self, et: Any, data: Any, **_: Any) -> None:
        self.events.append((et.type, data))

    def statuses(self) -> list[tuple[str, str | None]]:
        return [(d.status, d.error_code) for _, d in self.events if isinstance(d, DeliveryStatus)]

    def timers(self) -> list[TimerRequest]:
        return [d for t, d in self.events if isinstance(d, TimerRequest)]


@dataclass
class Provider:
    clock: Clock
    calls: list[datetime] = field(default_factory=list)

    async def call(self, **_: Any) -> Placed:
        self.calls.append(self.clock.now)
        return Placed(provider_id=f"CA{len(self.calls):032d}", status="queued")

    async def find_placed(self, **_: Any) -> list[str]:
        return []


class Scheduler:
    """One timer per id; a replayed id is dropped."""

    def __init__(self) -> None:
        self.timers: dict[str, TimerRequest] = {}
        self.fired: set[str] = set()
        self.dropped: list[str] = []

    def take(self, requests: list[TimerRequest]) -> None:
        for t in requests:
            if t.timer_id in self.timers:
                self.dropped.append(t.timer_id)
            else:
                self.timers[t.timer_id] = t

    def next_due(self) -> TimerRequest | None:
        pending = [t for i, t in self.timers.items() if i not in self.fired]
        return min(pending, key=lambda t: t.due_at or OPENING) if pending else None


@dataclass
class World:
    clock: Clock
    ledger: Ledger
    producer: Producer
    provider: Provider
    scheduler: Scheduler
    calling: VoiceCalling

    async def handle(self, reply: EngagementReply) -> None:
        seen = len(self.producer.timers())
        await self.calling.callback(reply)
        self.scheduler.take(self.producer.timers()[seen:])

    async def run(
        self, reply: EngagementReply, *, late: list[timedelta], hours: list[CallingHours]
    ) -> None:
        """Handle the reply, then fire each timer: the n-th re-publication is handled `late[n]`
        after the due time by this host's clock (negative: this clock behind the scheduler's),
        with the calling hours `hours[n]` (the last of each list from then on)."""
        self.calling.calling_hours = hours[0]
        await self.handle(reply)
        for n in range(1, 20):
            timer = self.scheduler.next_due()
            if timer is None:
                return
            self.scheduler.fired.add(timer.timer_id)
            assert timer.due_at is not None and timer.reply is not None
            self.clock.now = timer.due_at + late[min(n - 1, len(late) - 1)]
            self.calling.calling_hours = hours[min(n, len(hours) - 1)]
            await self.handle(timer.reply)
        pytest.fail("the call-back was deferred again and again")


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    clock = Clock(EARLY)
    monkeypatch.setattr(calling_mod, "utc_now", lambda: clock.now)
    monkeypatch.setattr(asyncio, "sleep", clock.sleep)  # every wait on the test's clock
    ledger, producer, provider = Ledger(), Producer(), Provider(clock)
    calling = VoiceCalling(
        ledger,  # type: ignore[arg-type]
        provider,  # type: ignore[arg-type]
        producer,  # type: ignore[arg-type]
        base_url="http://x",
        identity="+15005550006",
        calling_hours=HOURS,
    )
    return World(clock, ledger, producer, provider, Scheduler(), calling)


def _reply(until: datetime) -> EngagementReply:
    return EngagementReply(
        reply_id="sms-SM0001",
        customer_id="cust-1",
        channel="sms",
        intent="callback",
        text="3",
        at=EARLY,
        callback_number=NUMBER,
        callback_until=until,
    )


ON_TIME = timedelta(0)


@pytest.mark.parametrize(
    ("late", "hours"),
    [
        pytest.param([ON_TIME], [HOURS], id="on-time"),
        # This host's clock behind the scheduler's: the reply is back a moment before 08:00.
        pytest.param([timedelta(seconds=-1.5)], [HOURS], id="clock-behind"),
        pytest.param([timedelta(seconds=-25)], [HOURS], id="clock-far-behind"),
        # A backlog: handled after the hours closed; the call goes at the next opening.
        pytest.param([timedelta(hours=13, minutes=30), ON_TIME], [HOURS], id="backlog"),
        # The hours changed between the deferral and the timer: they now open at 09:30.
        pytest.param([ON_TIME], [HOURS, CallingHours("09:30", "21:00")], id="hours-changed"),
    ],
)
async def test_a_deferred_callback_is_placed_inside_the_hours(
    world: World, late: list[timedelta], hours: list[CallingHours]
) -> None:
    await world.run(_reply(until=EARLY + timedelta(days=3)), late=late, hours=hours)
    assert len(world.provider.calls) == 1, (world.scheduler.dropped, world.producer.statuses())
    assert permits(hours[-1], zones_for(NUMBER), world.provider.calls[0])
    assert world.producer.statuses() == [("sent", None)]


async def test_a_callback_whose_window_ends_before_the_next_opening_is_reported_failed(
    world: World,
) -> None:
    # Deferred to 08:00, handled after the hours closed; the window ends before the next day.
    reply = _reply(until=OPENING + timedelta(hours=14))
    await world.run(reply, late=[timedelta(hours=13, minutes=30)], hours=[HOURS])
    assert world.provider.calls == []
    assert world.producer.statuses() == [("failed", "outside-window")]


async def test_a_callback_late_every_time_ends_when_its_window_does(world: World) -> None:
    # Each re-publication handled after that day's hours closed: a later slot each time, until
    # the window ends (never deferred for good, never lost).
    reply = _reply(until=EARLY + timedelta(days=4))
    await world.run(reply, late=[timedelta(hours=13, minutes=30)], hours=[HOURS])
    assert world.provider.calls == []
    assert world.producer.statuses() == [("failed", "outside-window")]
    assert len(world.scheduler.timers) == 4 and world.scheduler.dropped == []


async def test_a_redelivered_reply_asks_for_the_same_timer(world: World) -> None:
    reply = _reply(until=EARLY + timedelta(days=1))
    await world.handle(reply)
    world.clock.now += timedelta(minutes=5)
    await world.handle(reply)
    [first, again] = world.producer.timers()
    assert first.timer_id == again.timer_id and first.due_at == OPENING
    assert world.scheduler.dropped == [first.timer_id] and world.provider.calls == []


def test_a_long_reply_id_still_makes_a_valid_timer_id() -> None:
    timer_id = calling_mod.callback_timer_id("r" * 200, OPENING)
    assert len(timer_id) <= calling_mod.ID_MAX
    assert timer_id != calling_mod.callback_timer_id("r" * 199, OPENING)


@pytest.mark.parametrize("calling_hours", [False, True], ids=["ivr", "callback"])
async def test_a_call_held_in_the_pacer_past_its_expiry_is_not_placed(
    world: World, calling_hours: bool
) -> None:
    if calling_hours:
        # A call-back at 20:59 in New York: its retries end when the hours close at 21:00.
        world.clock.now = datetime(2026, 6, 2, 0, 59, tzinfo=UTC)
    # A 429's Retry-After holds the caller id for 3 minutes.
    pacer = Pacer(1.0, clock=world.clock.monotonic, sleep=world.clock.sleep)
    pacer.hold("+15005550006", 180.0)
    world.calling.pacer = pacer
    if calling_hours:
        await world.calling.callback(_reply(until=world.clock.now + timedelta(days=1)))
    else:
        # An IVR call whose customer's window closes in a minute.
        ref = {
            "message_id": "m1",
            "request_id": "r1",
            "campaign_id": "c1",
            "customer_id": "cust-1",
            "case_id": None,
        }
        expires = world.clock.now + timedelta(minutes=1)
        await world.calling.place(Call("m1", NUMBER, "en-US", ref, expires), say="Hello.")
    assert world.provider.calls == []
    assert world.producer.statuses() == [("failed", "expired")]
    assert [row["status"] for row in world.ledger.rows.values()] == ["failed"]
