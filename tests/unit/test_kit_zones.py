"""A time zone name is an IANA zone name, or it is refused as bad input (never a 500)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from herald_kit import valid_zone
from herald_kit.windows import zone
from herald_scheduler.domain.campaigns import CampaignIn

NOT_ZONES = [
    "Europe",  # a directory of the zone database: IsADirectoryError from ZoneInfo
    "America",
    "x" * 300,  # too long for a file name: OSError from ZoneInfo
    "localtime",  # the host's own zone, whatever that is
    "Factory",
    "posixrules",
    "Mars/Olympus",
    "../../etc/passwd",
    "",
]


@pytest.mark.parametrize("name", ["Europe/Amsterdam", "UTC", "America/Argentina/Buenos_Aires"])
def test_an_iana_name_gives_its_zone(name: str) -> None:
    assert valid_zone(name) == ZoneInfo(name)


@pytest.mark.parametrize("name", NOT_ZONES)
def test_anything_else_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        valid_zone(name)


@pytest.mark.parametrize("name", NOT_ZONES)
def test_a_customer_zone_that_is_no_zone_reads_as_utc(name: str) -> None:
    assert zone(name) == ZoneInfo("UTC")


@pytest.mark.parametrize("name", NOT_ZONES)
def test_a_schedule_in_no_zone_is_refused_naming_the_field(name: str) -> None:
    body: dict[str, Any] = {
        "name": "n",
        "topic": "reminders",
        "trigger": {"kind": "schedule", "cron": "0 9 * * 1", "time_zone": name},
        "messages": {"sms": {"en": {"body": "hi"}}},
    }
    with pytest.raises(ValidationError) as info:
        CampaignIn.model_validate(body)
    assert [e["loc"] for e in info.value.errors()] == [("trigger", "schedule", "time_zone")]
