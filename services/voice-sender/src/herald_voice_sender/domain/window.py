"""When a call-back may be placed: inside legal calling hours, before the campaign's window ends.

The voice-sender holds no customer data, so the customer's local time is taken from the number
being called: every time zone the number may be in (phonenumbers' geographic zones) must be
inside the calling hours. Where a country spans zones this narrows the window, never widens it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_zones

UTC_ZONE = ZoneInfo("UTC")


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


@dataclass(frozen=True, slots=True)
class CallingHours:
    """A daily window [start, end) of local time, 'HH:MM'; wraps midnight when start > end."""

    start: str = "08:00"
    end: str = "21:00"

    def contains(self, local: datetime) -> bool:
        """Whether a local time falls inside the window."""
        start, end, minute = (
            _minutes(self.start),
            _minutes(self.end),
            local.hour * 60 + local.minute,
        )
        if start == end:
            return True
        if start < end:
            return start <= minute < end
        return minute >= start or minute < end


def zones_for(number: str) -> list[ZoneInfo]:
    """The zones a phone number may be in; UTC when the number names none we know."""
    try:
        names = phone_zones.time_zones_for_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        names = ()
    zones: list[ZoneInfo] = []
    for name in names:
        try:
            zones.append(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            continue  # phonenumbers says "Etc/Unknown" for numbers without a region
    return zones or [UTC_ZONE]


def permits(hours: CallingHours, zones: list[ZoneInfo], instant: datetime) -> bool:
    """Whether a call at this instant is inside the calling hours in every zone."""
    return all(hours.contains(instant.astimezone(z)) for z in zones)


def callback_slot(
    *, hours: CallingHours, zones: list[ZoneInfo], now: datetime, until: datetime
) -> datetime | None:
    """`now` when a call may go now; else the first later minute that is allowed and before
    `until`; None when the window does not open before `until`."""
    if now >= until:
        return None
    if permits(hours, zones, now):
        return now
    # Minute steps, checked on the real instant in each zone: DST gaps and folds cannot make a
    # candidate slip outside the hours. Two days bound the search (a window opens daily).
    candidate = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = min(until, now + timedelta(days=2))
    while candidate < limit:
        if permits(hours, zones, candidate):
            return candidate
        candidate += timedelta(minutes=1)
    return None


def hours_close(*, hours: CallingHours, zones: list[ZoneInfo], now: datetime) -> datetime:
    """The first minute after `now` outside the calling hours (in some zone): retries of a
    call-back placed now stop before it. Within a day, else a day from now (always open)."""
    candidate = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = now + timedelta(days=1)
    while candidate < limit:
        if not permits(hours, zones, candidate):
            return candidate
        candidate += timedelta(minutes=1)
    return limit
