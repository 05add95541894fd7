"""Time zone names as Herald accepts them: IANA names only, the same on every host."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

# Files in the zone database that are not zones of their own: what they mean depends on the host
# ('localtime' is the machine's own zone), or they mean nothing ('Factory').
HOST_NAMES = frozenset({"localtime", "Factory", "posixrules"})


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones() - HOST_NAMES)


def valid_zone(name: str) -> ZoneInfo:
    """The zone of an IANA name such as 'Europe/Amsterdam'; ValueError for anything else, which
    a pydantic validator turns into a 422 naming its field.

    ZoneInfo alone is no check: it opens whatever file the name leads to, so 'Europe' (a
    directory) raises IsADirectoryError, a very long name OSError, and 'localtime' answers with
    the host's own zone.
    """
    if name not in _known_zones():
        raise ValueError(f"unknown time zone {name[:64]!r}: use an IANA name (Europe/Amsterdam)")
    return ZoneInfo(name)


def offset_change(before: datetime, after: datetime, tz: ZoneInfo) -> datetime:
    """The first instant (to the second, in UTC) in (before, after] with `after`'s UTC offset in
    `tz`: where its clocks changed between two instants of different offsets.

    The search runs in UTC: arithmetic on datetimes of a zone counts wall-clock time, which a
    change of the clocks skips or repeats."""
    offset = after.astimezone(tz).utcoffset()
    lo, hi = before.astimezone(UTC), after.astimezone(UTC)
    while hi - lo > timedelta(seconds=1):
        mid = (lo + (hi - lo) / 2).replace(microsecond=0)
        if mid <= lo:
            mid = lo + timedelta(seconds=1)
        if mid.astimezone(tz).utcoffset() == offset:
            hi = mid
        else:
            lo = mid
    return hi
