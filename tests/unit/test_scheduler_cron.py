"""A schedule's cron reads as standard cron: days of the week count from Sunday (0 and 7)."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from herald_scheduler.domain.campaigns import CampaignIn, cron_trigger

MON, TUE, WED, THU, FRI, SAT, SUN = range(7)  # datetime.weekday()
EVERY_DAY = {MON, TUE, WED, THU, FRI, SAT, SUN}


def _weekdays(cron: str, time_zone: str = "UTC") -> list[int]:
    """The weekdays (in the schedule's zone) of its fires over the four weeks from a Monday."""
    trigger = cron_trigger(cron, time_zone)
    now = datetime(2026, 12, 7, 0, 0, 30, tzinfo=UTC)  # a Monday
    end = now + timedelta(weeks=4)
    days: list[int] = []
    previous = None
    while (fire := trigger.get_next_fire_time(previous, now)) is not None and fire < end:
        days.append(fire.weekday())
        previous, now = fire, fire + timedelta(days=1)  # one fire a day is enough to see
        now = now.replace(hour=0, minute=0, second=0)
    return days


@pytest.mark.parametrize(
    "dow,days",
    [
        ("1-5", {MON, TUE, WED, THU, FRI}),
        ("mon-fri", {MON, TUE, WED, THU, FRI}),
        ("0", {SUN}),
        ("7", {SUN}),
        ("1", {MON}),
        ("6", {SAT}),
        ("mon", {MON}),
        ("SUN", {SUN}),
        ("1,3,5", {MON, WED, FRI}),
        ("0,6", {SAT, SUN}),
        ("5-7", {FRI, SAT, SUN}),
        ("fri-sun", {FRI, SAT, SUN}),
        ("*/2", {SUN, TUE, THU, SAT}),
        ("1-7/3", {MON, THU, SUN}),
        ("2/2", {TUE, THU, SAT}),
        ("0-7", EVERY_DAY),
        ("*", EVERY_DAY),
    ],
)
def test_a_cron_fires_on_exactly_the_weekdays_standard_cron_names(dow: str, days: set[int]) -> None:
    for cron in (f"0 9 * * {dow}", f"0 0 9 * * {dow}"):
        fired = _weekdays(cron)
        assert set(fired) == days, (cron, sorted(fired))


def test_weekdays_are_the_schedule_zones_own() -> None:
    # 23:30 on a Monday in Auckland is still Monday there (Monday morning in UTC).
    assert set(_weekdays("30 23 * * 1", "Pacific/Auckland")) == {MON}


def _schedule(cron: str) -> dict[str, Any]:
    return {
        "name": "n",
        "topic": "reminders",
        "trigger": {"kind": "schedule", "cron": cron, "time_zone": "UTC"},
        "messages": {"sms": {"en": {"body": "hi"}}},
    }


def test_sunday_as_seven_is_accepted() -> None:
    trigger = CampaignIn.model_validate(_schedule("* * * * 7")).trigger
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    fire = trigger.apscheduler_trigger().get_next_fire_time(None, now)  # type: ignore[union-attr]
    assert fire is not None and fire.weekday() == SUN


@pytest.mark.parametrize("dow", ["8", "mon-sun/0", "*/0", "6-1", "funday", "1,,2"])
def test_a_day_of_week_standard_cron_does_not_know_is_refused(dow: str) -> None:
    with pytest.raises(ValidationError) as info:
        CampaignIn.model_validate(_schedule(f"0 9 * * {dow}"))
    assert [e["loc"] for e in info.value.errors()] == [("trigger", "schedule", "cron")]


def _fires(cron: str, time_zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every fire of a schedule from `start` to `end`, as the scheduler steps through them."""
    trigger = cron_trigger(cron, time_zone)
    fires: list[datetime] = []
    previous = None
    while (fire := trigger.get_next_fire_time(previous, start)) is not None and fire < end:
        fires.append(fire.astimezone(UTC))
        previous = start = fire
    return fires


@pytest.mark.parametrize(
    "cron,time_zone,day,once_at",
    [
        # 02:30 happens twice on 2026-10-25 in Amsterdam (02:00-03:00 CEST, then CET).
        ("30 2 * * *", "Europe/Amsterdam", 25, datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        # 01:30 happens twice on 2026-11-01 in New York.
        ("30 1 * * *", "America/New_York", 1, datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),
        # A six-field cron with a fixed hour alike.
        ("15 30 2 * * *", "Europe/Amsterdam", 25, datetime(2026, 10, 25, 0, 30, 15, tzinfo=UTC)),
    ],
)
def test_a_daily_time_the_clocks_repeat_fires_once_at_its_first_occurrence(
    cron: str, time_zone: str, day: int, once_at: datetime
) -> None:
    month = once_at.month
    fires = _fires(
        cron,
        time_zone,
        datetime(2026, month, day - 3 if day > 3 else 1, tzinfo=UTC),
        datetime(2026, month, day + 3, tzinfo=UTC),
    )
    local_days = [f.astimezone(ZoneInfo(time_zone)).date() for f in fires]
    assert len(local_days) == len(set(local_days)), fires  # one fire per local day
    assert [f for f in fires if f.day == day] == [once_at]


def test_every_minute_of_a_repeated_hour_fires_once_and_every_real_hour_counts() -> None:
    amsterdam = "Europe/Amsterdam"
    start = datetime(2026, 10, 24, 22, tzinfo=UTC)  # midnight of 2026-10-25 there
    end = datetime(2026, 10, 25, 23, tzinfo=UTC)  # the next midnight: a day of 25 hours
    # A fixed hour: the minutes of 02:00-02:59 once, not in both passes.
    assert len(_fires("* 2 * * *", amsterdam, start, end)) == 60
    # A wildcard hour is every hour that passes, as in cron: the repeated one too.
    hourly = _fires("0 * * * *", amsterdam, start, end)
    assert hourly == [start + timedelta(hours=h) for h in range(25)]
    assert len(_fires("0 */2 * * *", amsterdam, start, end)) == 13  # 00, 02, 02 again, .., 22


@pytest.mark.parametrize(
    "cron,time_zone,start,gap_end",
    [
        # Santiago's clocks go from 00:00 to 01:00 on 2026-09-06: midnight never happens.
        (
            "0 0 * * *",
            "America/Santiago",
            datetime(2026, 9, 3, tzinfo=UTC),
            datetime(2026, 9, 6, 4, tzinfo=UTC),
        ),
        (
            "30 0 * * *",
            "America/Santiago",
            datetime(2026, 9, 3, tzinfo=UTC),
            datetime(2026, 9, 6, 4, tzinfo=UTC),
        ),
        # Amsterdam's go from 02:00 to 03:00 on 2026-03-29: 02:30 never happens.
        (
            "30 2 * * *",
            "Europe/Amsterdam",
            datetime(2026, 3, 26, tzinfo=UTC),
            datetime(2026, 3, 29, 1, tzinfo=UTC),
        ),
    ],
)
def test_a_daily_time_the_clocks_skip_fires_at_the_first_instant_after_the_gap(
    cron: str, time_zone: str, start: datetime, gap_end: datetime
) -> None:
    fires = _fires(cron, time_zone, start, start + timedelta(days=6))
    local_days = [f.astimezone(ZoneInfo(time_zone)).date() for f in fires]
    # Every day fires once, the day of the gap included.
    assert local_days == [local_days[0] + timedelta(days=i) for i in range(6)], fires
    assert gap_end in fires
    # Every minute of a skipped hour fires once, when the hour ends (nothing is lost, nothing
    # sent sixty times).
    hour_skipped = gap_end.astimezone(ZoneInfo(time_zone)).hour - 1
    minutes = _fires(
        f"* {hour_skipped} * * *",
        time_zone,
        gap_end - timedelta(hours=1),
        gap_end + timedelta(hours=1),
    )
    assert minutes == [gap_end]


def test_a_wall_clock_schedule_survives_the_job_store() -> None:
    # APScheduler's MongoDB job store pickles the trigger with the job.
    trigger = cron_trigger("30 2 * * *", "Europe/Amsterdam")
    copy = pickle.loads(pickle.dumps(trigger))  # noqa: S301 (our own bytes)
    assert type(copy) is type(trigger)
    now = datetime(2026, 10, 24, tzinfo=UTC)
    fires, previous = [], None
    for _ in range(3):
        previous = copy.get_next_fire_time(previous, now)
        fires.append(previous.astimezone(UTC))
    assert fires == [
        datetime(2026, 10, 24, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),
    ]


def _dates(cron: str, time_zone: str, start: datetime, count: int) -> list[str]:
    trigger = cron_trigger(cron, time_zone)
    fires, previous = [], None
    for _ in range(count):
        previous = trigger.get_next_fire_time(previous, start)
        fires.append(previous.astimezone(ZoneInfo(time_zone)).strftime("%a %d %b %H:%M"))
    return fires


def test_a_day_of_month_and_a_day_of_week_both_given_fire_on_either_as_in_cron() -> None:
    # '0 9 1 * mon' is "the 1st, and every Monday" in cron, not "a 1st that is a Monday".
    start = datetime(2026, 12, 20, tzinfo=UTC)  # a Sunday
    assert _dates("0 9 1 * mon", "Europe/Paris", start, 5) == [
        "Mon 21 Dec 09:00",
        "Mon 28 Dec 09:00",
        "Fri 01 Jan 09:00",
        "Mon 04 Jan 09:00",
        "Mon 11 Jan 09:00",
    ]
    # A date both days match fires once.
    assert _dates("0 9 1 * 5", "UTC", start, 3) == [
        "Fri 25 Dec 09:00",
        "Fri 01 Jan 09:00",
        "Fri 08 Jan 09:00",
    ]


@pytest.mark.parametrize(
    "cron,day_ok",
    [
        # A day field starting with '*' restricts with AND, as in cron: Mondays on 1, 11, 21, 31.
        ("0 9 */10 * mon", lambda f: f[:3] == "Mon" and f[4:6] in {"01", "11", "21", "31"}),
        ("0 9 1 * *", lambda f: f[4:6] == "01"),
        ("0 9 * * 1", lambda f: f[:3] == "Mon"),
    ],
)
def test_a_starred_day_field_leaves_the_other_day_field_alone(cron: str, day_ok: Any) -> None:
    fires = _dates(cron, "UTC", datetime(2026, 12, 20, tzinfo=UTC), 6)
    assert all(day_ok(f) for f in fires), fires
    assert len(set(fires)) == len(fires)


def test_the_either_day_reading_survives_the_job_store_and_older_triggers_are_marked() -> None:
    trigger = cron_trigger("0 9 1 * mon", "UTC")
    copy = pickle.loads(pickle.dumps(trigger))  # noqa: S301 (our own bytes)
    assert copy.either_day is True
    start = datetime(2026, 12, 29, tzinfo=UTC)  # a Tuesday: the next fire is Friday the 1st
    assert copy.get_next_fire_time(None, start) == datetime(2027, 1, 1, 9, tzinfo=UTC)
    # A trigger pickled before the rule was kept has no `either_day`: the scheduler replaces it.
    state = trigger.__getstate__()
    del state["either_day"]
    old = type(trigger).__new__(type(trigger))
    old.__setstate__(state)
    assert old.either_day is None
