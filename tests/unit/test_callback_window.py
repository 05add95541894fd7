"""When the voice-sender may place a call-back: calling hours in the number's zones, before the
campaign's window ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from herald_voice_sender.domain.window import (
    CallingHours,
    callback_slot,
    hours_close,
    permits,
    zones_for,
)

NY = [ZoneInfo("America/New_York")]
HOURS = CallingHours("08:00", "21:00")


def test_a_number_maps_to_its_zones_and_an_unknown_one_to_utc() -> None:
    assert zones_for("+12015550123") == NY
    assert len(zones_for("+18005550123")) > 1  # toll-free: anywhere in the NANP
    assert zones_for("not a number") == [ZoneInfo("UTC")]


def test_inside_the_hours_the_call_goes_now() -> None:
    now = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)  # 10:00 in New York
    assert callback_slot(hours=HOURS, zones=NY, now=now, until=now + timedelta(hours=1)) == now


def test_outside_the_hours_it_waits_for_the_opening() -> None:
    now = datetime(2026, 6, 1, 3, 30, tzinfo=UTC)  # 23:30 in New York
    slot = callback_slot(hours=HOURS, zones=NY, now=now, until=now + timedelta(days=1))
    assert slot == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)  # 08:00 in New York


def test_no_call_when_the_campaign_window_closes_before_the_opening() -> None:
    now = datetime(2026, 6, 1, 3, 30, tzinfo=UTC)
    assert callback_slot(hours=HOURS, zones=NY, now=now, until=now + timedelta(hours=2)) is None
    assert callback_slot(hours=HOURS, zones=NY, now=now, until=now) is None


def test_every_zone_of_the_number_must_be_inside_the_hours() -> None:
    zones = [ZoneInfo("America/New_York"), ZoneInfo("America/Los_Angeles")]
    now = datetime(2026, 6, 1, 13, 0, tzinfo=UTC)  # 09:00 New York, 06:00 Los Angeles
    slot = callback_slot(hours=HOURS, zones=zones, now=now, until=now + timedelta(days=1))
    assert slot == datetime(2026, 6, 1, 15, 0, tzinfo=UTC)  # 08:00 in Los Angeles


@given(
    now=st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(["America/New_York", "Europe/London", "Australia/Lord_Howe", "UTC"]),
)
def test_a_slot_is_always_inside_the_hours_and_before_the_window_ends(
    now: datetime, zone: str
) -> None:
    zones = [ZoneInfo(zone)]
    until = now + timedelta(hours=30)
    slot = callback_slot(hours=HOURS, zones=zones, now=now, until=until)
    assert slot is not None  # a daily window always opens within 30 hours
    assert now <= slot < until and permits(HOURS, zones, slot)


def test_retries_of_a_call_back_end_when_the_hours_close() -> None:
    now = datetime(2026, 6, 1, 0, 30, tzinfo=UTC)  # 20:30 in New York
    assert hours_close(hours=HOURS, zones=NY, now=now) == datetime(2026, 6, 1, 1, 0, tzinfo=UTC)
    always = CallingHours("00:00", "00:00")
    assert hours_close(hours=always, zones=NY, now=now) == now + timedelta(days=1)
