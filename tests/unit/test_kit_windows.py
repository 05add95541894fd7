"""Contact windows across clock changes: a window opens (or closes) at the first minute it
does on the customer's clock, not an hour off, on the nights the clocks jump."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald_contracts import ContactPreferences
from herald_kit.windows import (
    GIVE_WAY_AFTER,
    ContactWindow,
    Window,
    contact_window,
    default_legal_windows,
)

NEW_YORK = ZoneInfo("America/New_York")  # 2026-03-08: 02:00 EST -> 03:00 EDT at 07:00 UTC


def test_quiet_hours_ending_in_the_gap_end_when_the_clocks_jump() -> None:
    # Quiet 23:00-02:30: 02:30 never happens that night, and at 03:00 EDT (07:00 UTC) it is
    # over; 03:30 EDT would keep the customer waiting half an hour for nothing.
    window = ContactWindow(tz=NEW_YORK, quiet=Window.parse("23:00", "02:30"))
    one_am = datetime(2026, 3, 8, 6, tzinfo=UTC)
    assert window.next_allowed(one_am) == datetime(2026, 3, 8, 7, tzinfo=UTC)


def test_a_window_opening_in_the_gap_opens_when_the_clocks_jump_not_the_next_day() -> None:
    # 02:30-03:20: on the night of the change 03:00-03:20 EDT is still in it.
    window = ContactWindow(tz=NEW_YORK, allowed=Window.parse("02:30", "03:20"))
    one_am = datetime(2026, 3, 8, 6, tzinfo=UTC)
    assert window.next_allowed(one_am) == datetime(2026, 3, 8, 7, tzinfo=UTC)
    assert window.closes_after(datetime(2026, 3, 8, 7, tzinfo=UTC)) == datetime(
        2026, 3, 8, 7, 20, tzinfo=UTC
    )


def test_a_half_hour_gap_opens_the_window_at_the_jump() -> None:
    # Lord Howe goes from 02:00 to 02:30 (UTC+10:30 -> +11) on 2026-10-04 at 15:30 UTC.
    window = ContactWindow(tz=ZoneInfo("Australia/Lord_Howe"), quiet=Window.parse("22:00", "02:15"))
    assert window.next_allowed(datetime(2026, 10, 3, 15, tzinfo=UTC)) == datetime(
        2026, 10, 3, 15, 30, tzinfo=UTC
    )


def test_clocks_going_back_into_quiet_hours_close_the_window() -> None:
    # Adelaide goes back from 03:00 to 02:00 (UTC+10:30 -> +9:30) on 2026-04-05 at 16:30 UTC:
    # quiet hours 01:30-02:30 start again then, though 01:30 does not come round again.
    window = ContactWindow(tz=ZoneInfo("Australia/Adelaide"), quiet=Window.parse("01:30", "02:30"))
    at = datetime(2026, 4, 4, 16, 8, tzinfo=UTC)  # 02:38 ACDT
    assert window.permits(at)
    assert window.closes_after(at) == datetime(2026, 4, 4, 16, 30, tzinfo=UTC)


def _first(window: ContactWindow, now: datetime, allowed: bool) -> datetime | None:
    """Minute by minute, the first instant after `now` (two days at most) that is (or is not)
    allowed."""
    at = now.replace(second=0, microsecond=0)
    for _ in range(2 * 24 * 60):
        at += timedelta(minutes=1)
        if window.permits(at) is allowed:
            return at
    return None


# Clock changes of 2026, in the zone that makes them.
CHANGES = [
    ("America/New_York", datetime(2026, 3, 8, 7, tzinfo=UTC)),  # forward
    ("America/New_York", datetime(2026, 11, 1, 6, tzinfo=UTC)),  # back
    ("Europe/Berlin", datetime(2026, 3, 29, 1, tzinfo=UTC)),  # forward
    ("Europe/Berlin", datetime(2026, 10, 25, 1, tzinfo=UTC)),  # back
    ("Australia/Lord_Howe", datetime(2026, 4, 4, 15, tzinfo=UTC)),  # back half an hour
    ("Australia/Lord_Howe", datetime(2026, 10, 3, 15, 30, tzinfo=UTC)),  # forward half an hour
    ("Australia/Adelaide", datetime(2026, 4, 4, 16, 30, tzinfo=UTC)),  # back
    ("Australia/Adelaide", datetime(2026, 10, 3, 16, 30, tzinfo=UTC)),  # forward
    ("America/Santiago", datetime(2026, 9, 6, 4, tzinfo=UTC)),  # forward at midnight
]
MINUTES = st.sampled_from([0, 30, 60, 90, 120, 135, 150, 165, 180, 200, 480, 1260, 1380])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    change=st.sampled_from(CHANGES),
    also=st.lists(st.sampled_from([z for z, _ in CHANGES] + ["Asia/Kolkata"]), max_size=1),
    allowed=st.none() | st.tuples(MINUTES, MINUTES),
    quiet=st.none() | st.tuples(MINUTES, MINUTES),
    offset=st.integers(-6 * 60, 30),
)
def test_the_window_opens_and_closes_at_the_first_minute_it_does_across_a_clock_change(
    change: tuple[str, datetime],
    also: list[str],
    allowed: tuple[int, int] | None,
    quiet: tuple[int, int] | None,
    offset: int,
) -> None:
    zone, at = change
    window = ContactWindow(
        tz=ZoneInfo(zone),
        allowed=Window(*allowed) if allowed else None,
        quiet=Window(*quiet) if quiet else None,
        also=tuple(ZoneInfo(z) for z in also),
    )
    now = at + timedelta(minutes=offset)
    if window.permits(now):
        closes = _first(window, now, allowed=False)
        if closes is not None:
            assert window.closes_after(now) == closes
        return
    opens = _first(window, now, allowed=True)
    if opens is not None:
        assert window.next_allowed(now) == opens


# A customer's zone on file and a number whose zones lie on the other side of the world, or
# span it: in some weeks of the year no hour is allowed in all of them together.
FAR_APART = [
    ("Europe/London", "+64211234567"),  # New Zealand
    ("America/New_York", "+61412345678"),  # Australia, Sydney to Cocos
    ("Europe/Moscow", "+64211234567"),
    ("Pacific/Auckland", "+447911123456"),  # United Kingdom
    ("UTC", "+79161234567"),  # Russia, Kaliningrad to Kamchatka
    ("Australia/Sydney", "+12125551234"),  # New York
]
EVENINGS = st.sampled_from(["19:00", "20:00", "21:00", "22:00"])
MORNINGS = st.sampled_from(["07:00", "08:00", "09:00", "10:00"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    place=st.sampled_from(FAR_APART),
    quiet=st.none() | st.tuples(EVENINGS, MORNINGS),
    now=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
)
def test_a_contact_waits_at_most_a_day_past_the_fallback_zones_opening_any_day_of_the_year(
    place: tuple[str, str], quiet: tuple[str, str] | None, now: datetime
) -> None:
    # When the number's zones share no allowed hour, on some weeks of the year (one hemisphere
    # on summer time, the other not) or all of them, the customer's zone (else the region's
    # main one) decides: the windows never "never open", nor hold a contact for days.
    zone, number = place
    prefs = ContactPreferences.model_validate(
        {
            "customer_id": "c1",
            "version": 1,
            "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
            "time_zone": zone,
            "channels": {"sms": {"address": number}},
            **({"quiet_hours": {"start": quiet[0], "end": quiet[1]}} if quiet else {}),
        }
    )
    window = contact_window(
        prefs, "sms", critical=False, legal_windows=default_legal_windows(), critical_windows={}
    )
    assert window.fallback is not None
    opens = window.next_allowed(now)
    assert opens - window.fallback.next_allowed(now) <= GIVE_WAY_AFTER
    assert window.permits(opens)
    if opens > now:
        assert not window.permits(opens - timedelta(minutes=1))
    closes = window.closes_after(opens)
    assert closes is not None and closes > opens
    assert not window.permits(closes)
    assert window.permits(closes - timedelta(minutes=1))
