"""A schedule that could never fire is refused, and one the scheduler cannot take keeps no
other campaign from firing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from pydantic import ValidationError

from herald_kit import InvalidInput
from herald_scheduler.domain.campaigns import CampaignIn, ScheduleTrigger
from herald_scheduler.messaging.schedules import ScheduleRunner

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def _definition(**trigger: Any) -> dict[str, Any]:
    return {
        "name": "n",
        "topic": "reminders",
        "trigger": {"kind": "schedule", "time_zone": "UTC", **trigger},
        "messages": {"sms": {"en": {"body": "hi"}}},
    }


def _trigger(**trigger: Any) -> ScheduleTrigger:
    parsed = CampaignIn.model_validate(_definition(**trigger)).trigger
    assert isinstance(parsed, ScheduleTrigger)
    return parsed


@pytest.mark.parametrize(
    "trigger,field",
    [
        ({"at": NOW - timedelta(days=1)}, "trigger.schedule.at"),
        ({"at": NOW}, "trigger.schedule.at"),
        ({"cron": "0 0 31 2 *"}, "trigger.schedule.cron"),
        ({"cron": "0 0 30 2 *", "time_zone": "Europe/Amsterdam"}, "trigger.schedule.cron"),
        ({"cron": "0 0 0 31 4 *"}, "trigger.schedule.cron"),
    ],
)
def test_a_schedule_that_would_never_fire_is_refused_naming_the_field(
    trigger: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        _trigger(**trigger).check_fires(NOW)
    assert info.value.field == field and "never fire" in info.value.detail


@pytest.mark.parametrize(
    "trigger",
    [
        {"at": NOW + timedelta(seconds=1)},
        {"cron": "0 0 29 2 *"},  # leap days come
        {"cron": "0 9 * * 1-5", "time_zone": "Europe/Amsterdam"},
    ],
)
def test_a_schedule_that_fires_again_passes(trigger: dict[str, Any]) -> None:
    _trigger(**trigger).check_fires(NOW)


@pytest.mark.parametrize(
    "at", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00", "3000-01-01T00:00:00Z"]
)
def test_a_one_off_time_outside_the_years_a_schedule_can_hold_is_refused(at: str) -> None:
    with pytest.raises(ValidationError) as info:
        CampaignIn.model_validate(_definition(at=at))
    assert [e["loc"] for e in info.value.errors()] == [("trigger", "schedule", "at")]


class _Campaigns:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    async def active_schedules(self) -> list[dict[str, Any]]:
        return self.docs


def _doc(cid: str, definition: dict[str, Any]) -> dict[str, Any]:
    return {"_id": cid, "version": 1, "status": "active", "definition": definition}


async def test_a_campaign_that_cannot_be_scheduled_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Saved before the checks existed: a time APScheduler overflows on, a definition that no
    # longer reads. Neither may keep the campaign after them from being scheduled.
    overflow = _definition(at="9999-12-31T23:59:59-23:59")
    unreadable = _definition(cron="not a cron")
    good = _definition(cron="0 9 * * *")
    campaigns = _Campaigns([_doc("a-overflow", overflow), _doc("b-bad", unreadable)])
    campaigns.docs.append(_doc("c-good", good))
    runner = ScheduleRunner(
        campaigns=cast(Any, campaigns),
        fires=cast(Any, None),
        fanout=cast(Any, None),
        lease=cast(Any, None),
        mongo_uri="mongodb://unused",
        mongo_db="unused",
        tick_seconds=1,
    )
    runner._scheduler = AsyncIOScheduler(timezone="UTC")
    runner._scheduler.start(paused=True)
    try:
        await runner._reconcile()
        await runner._reconcile()  # the next tick tries again, and logs nothing new
        assert runner.job_ids() == {"c-good"}
    finally:
        runner._scheduler.shutdown(wait=False)
    logged = [r for r in caplog.records if r.name == "herald.scheduler.schedules"]
    assert sorted(getattr(r, "campaign", "") for r in logged) == ["a-overflow", "b-bad"]


@pytest.mark.parametrize(
    "audience",
    [
        "1 + 1",  # a constant, never true or false
        "1 / 0 == 1",  # reads nothing and fails for everyone
        "contact.locale",  # a string
        "size(cases)",  # a number
        'contact.version > 1 ? "a" : "b"',
        'contact.locale.matches("(")',  # not a regular expression
        'cases.exists(c, matches(c.status, "["))',
    ],
)
def test_an_audience_that_can_select_no_customer_is_refused_naming_the_field(
    audience: str,
) -> None:
    trigger = _trigger(cron="0 9 * * *", audience=audience)  # it parses
    with pytest.raises(InvalidInput) as info:
        trigger.check_audience()
    assert info.value.field == "trigger.schedule.audience"


@pytest.mark.parametrize(
    "audience",
    [
        'contact.locale == "nl"',
        'cases.exists(c, c.status == "delayed")',
        'contact.locale.matches("^n[lL]$")',
        "has(contact.quiet_hours) && contact.version > 1",
        "contact.channels.sms.verified",  # a boolean only the snapshot's values can tell
        "true",
    ],
)
def test_an_audience_that_can_select_customers_is_accepted(audience: str) -> None:
    _trigger(cron="0 9 * * *", audience=audience).check_audience()
