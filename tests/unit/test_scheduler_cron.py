"""A schedule's cron reads as standard cron: days of the week count from Sunday (0 and 7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

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
