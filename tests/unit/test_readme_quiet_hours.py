"""The README's walk-through, as written: its customer's SMS goes at once in London's daytime, is
deferred at night, and the contacts it offers to see an SMS go at once cover every hour.

The numbers and zones are read from README.md itself, so the text and these rules cannot drift
apart: an SMS holds in the zones of the number as well as the customer's own."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from herald_contracts import ChannelAddress, ContactPreferences
from herald_kit.windows import contact_window, default_legal_windows
from herald_preferences.domain.contacts import normalise_phone

README = (Path(__file__).parents[2] / "README.md").read_text()
# Step 1's contact and the step 4 query for its phone.
STEP_1 = json.loads(re.search(r"/v1/contacts -H '[^']*' -d '(\{.*?\})'", README, re.S)[1])
STEP_4_TO = re.search(r"/sandbox/api/sms\?to=%2B(\d+)", README)[1]
# The contacts offered to see an SMS go at once (merge patches of step 1's).
PATCHES = [json.loads(p) for p in re.findall(r"-d '(\{\"channels\".*?\})'", README)]
LONDON = ZoneInfo("Europe/London")
WINTER, SUMMER = datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 7, 15, tzinfo=UTC)


def _goes_now(number: str, time_zone: str, now: datetime) -> bool:
    prefs = ContactPreferences(
        customer_id=STEP_1["customer_id"],
        version=1,
        channels={"sms": ChannelAddress(address=normalise_phone(number, "ZZ"))},
        ranking=["sms"],
        consents={},
        locale=STEP_1["locale"],
        time_zone=time_zone,
        updated_at=now,
    )
    window = contact_window(
        prefs, "sms", critical=False, legal_windows=default_legal_windows(), critical_windows={}
    )
    return window.next_allowed(now) == now


def test_the_walk_through_reads_as_the_rules_work() -> None:
    assert STEP_1["time_zone"] == "Europe/London"
    assert normalise_phone(STEP_1["channels"]["sms"], "ZZ") == "+" + STEP_4_TO
    assert len(PATCHES) >= 2


@pytest.mark.parametrize("day", [WINTER, SUMMER])
def test_the_london_customer_gets_the_sms_at_once_in_london_daytime(day: datetime) -> None:
    sms = STEP_1["channels"]["sms"]
    for hour in (9, 12, 19):  # London time, both sides of daylight saving
        at = day.replace(hour=hour, tzinfo=LONDON).astimezone(UTC)
        assert _goes_now(sms, "Europe/London", at), at


@pytest.mark.parametrize("day", [WINTER, SUMMER])
def test_at_london_night_only_a_new_number_and_zone_make_it_go(day: datetime) -> None:
    at = day.replace(hour=2)  # 02:00 UTC: night in London in either season
    sms = STEP_1["channels"]["sms"]
    assert not _goes_now(sms, "Europe/London", at)
    for patch in PATCHES:  # the time_zone alone does not help: the number is in London
        assert not _goes_now(sms, patch["time_zone"], at), patch["time_zone"]


@pytest.mark.parametrize("day", [WINTER, SUMMER])
def test_some_offered_contact_goes_at_once_at_every_hour(day: datetime) -> None:
    contacts = [(STEP_1["channels"]["sms"], STEP_1["time_zone"])] + [
        (p["channels"]["sms"], p["time_zone"]) for p in PATCHES
    ]
    for hour in range(24):
        at = day.replace(hour=hour, minute=30)
        assert any(_goes_now(n, z, at) for n, z in contacts), at
