"""Quiet hours and legal contact windows, in the customer's local time.

Pure rules shared by the dispatcher (which applies them at send time) and the scheduler's dry
run (which predicts them), so the two can never disagree. Every instant this module returns as
"allowed" has been checked against the rules on the real UTC instant converted to the
customer's zone, so daylight-saving gaps and folds cannot make a candidate slip outside a
window.

On a phone channel the windows hold in every time zone the number may be in as well as in the
customer's own: a missing or wrong zone in the preferences can then only narrow the hours,
never move a call or an SMS into the night where the phone is. Where the number's zones share
no allowed minute for more than a day (quiet hours and a number spanning ten hours, or two
hemispheres in the weeks one is on summer time and the other not), the decision gives way to
the customer's zone or its region's main one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
from babel.core import get_global
from phonenumbers import timezone as phone_zones
from pydantic import BaseModel, Field

from herald_contracts import Channel, ContactPreferences
from herald_kit._zones import offset_change, valid_zone

MINUTES_PER_DAY = 24 * 60
# How much longer than the fallback zone alone would, a contact waits for the hour that is
# allowed in every zone of the number together: a day at most, never weeks.
GIVE_WAY_AFTER = timedelta(hours=24)
# The zone a contact carries when its owner gave none.
UNSAID_ZONE: str = ContactPreferences.model_fields["time_zone"].default
HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"


class LocalWindow(BaseModel):
    """A daily window in the customer's local time, [start, end) (configuration)."""

    start: str = Field(pattern=HHMM)
    end: str = Field(pattern=HHMM)


LegalWindows = Mapping[str, Mapping[str, LocalWindow]]


def default_legal_windows() -> dict[str, dict[str, LocalWindow]]:
    """SMS and voice only between 08:00 and 21:00 local unless a region says otherwise."""
    window = LocalWindow(start="08:00", end="21:00")
    return {"default": {"sms": window, "voice": window}}


def parse_hhmm(value: str) -> int:
    """'08:30' → minutes after midnight."""
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


@dataclass(frozen=True, slots=True)
class Window:
    """A daily window [start, end) in local minutes; it wraps midnight when start > end.

    start == end means the whole day.
    """

    start: int
    end: int

    @classmethod
    def parse(cls, start: str, end: str) -> Window:
        """From 'HH:MM' strings."""
        return cls(parse_hhmm(start), parse_hhmm(end))

    def contains(self, minute: int) -> bool:
        """Whether a local minute-of-day falls inside the window."""
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def zone(name: str) -> ZoneInfo:
    """The customer's zone; UTC when the name is unknown (never guess a laxer zone)."""
    return known_zone(name) or ZoneInfo("UTC")


def known_zone(name: str) -> ZoneInfo | None:
    """The zone of that name; None when there is none."""
    try:
        return valid_zone(name)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ContactWindow:
    """When one channel may reach one customer: inside `allowed`, outside `quiet`, in `tz` and
    in every zone of `also` (the zones the customer's phone number may be in).

    With a `fallback` (the same windows in the customer's zone or the region's main one), an
    instant the fallback allows is allowed too when the windows do not open in every zone
    together within `GIVE_WAY_AFTER` of it: a contact then waits at most a day longer than the
    fallback alone would make it, on the weeks the zones share no allowed minute as on the
    others."""

    tz: ZoneInfo
    allowed: Window | None = None
    quiet: Window | None = None
    also: tuple[ZoneInfo, ...] = ()
    fallback: ContactWindow | None = None

    @property
    def zones(self) -> tuple[ZoneInfo, ...]:
        """Every zone the windows hold in."""
        return (self.tz, *(z for z in self.also if z != self.tz))

    def permits(self, instant: datetime) -> bool:
        """Whether a contact at this UTC instant respects both windows in every zone, or in the
        fallback's when they do not open in every zone together for more than a day."""
        if self._holds(instant):
            return True
        return (
            self.fallback is not None
            and self.fallback.permits(instant)
            and self._gives_way(instant)
        )

    def _holds(self, instant: datetime) -> bool:
        """Whether both windows allow this instant in every zone."""
        return all(self._permits_in(z, instant) for z in self.zones)

    def _gives_way(self, instant: datetime) -> bool:
        """Whether the windows, not open in every zone at `instant`, stay shut for more than
        `GIVE_WAY_AFTER` after it, so that the fallback decides (never without one)."""
        if self.fallback is None:
            return False
        opens = self._opens_after(instant, GIVE_WAY_AFTER)
        return opens is None or opens - instant > GIVE_WAY_AFTER

    def _opens_after(self, now: datetime, within: timedelta | None = None) -> datetime | None:
        """The first instant after `now` at which both windows allow contact in every zone,
        searched within nine days or, not as far, `within`; None when there is none."""
        days = 9 if within is None else min(9, within.days + 2)  # whole local days from today
        return self._first(self._opening, now, allowed=True, days=days)

    @property
    def _opening(self) -> list[int]:
        """The local minutes at which contact may start being allowed."""
        return [w.start for w in (self.allowed,) if w is not None] + [
            w.end for w in (self.quiet,) if w is not None
        ]

    @property
    def _closing(self) -> list[int]:
        """The local minutes at which contact may stop being allowed."""
        return [w.end for w in (self.allowed,) if w is not None and w.start != w.end] + [
            w.start for w in (self.quiet,) if w is not None and w.start != w.end
        ]

    def _permits_in(self, tz: ZoneInfo, instant: datetime) -> bool:
        local = instant.astimezone(tz)
        minute = local.hour * 60 + local.minute
        if self.allowed is not None and not self.allowed.contains(minute):
            return False
        return not (
            self.quiet is not None
            and self.quiet.start != self.quiet.end
            and self.quiet.contains(minute)
        )

    def _first(
        self, minutes: list[int], now: datetime, allowed: bool, days: int = 9
    ) -> datetime | None:
        """The earliest UTC instant after `now`, within `days` local days (nine), at which a
        local time of `minutes` falls in some zone and contact is (or, `allowed` false, is not)
        allowed in every zone.

        The next two local days are searched first: their candidates before `now` + 22 h come
        before any of a later day's in every zone, whatever its offset and a DST change.
        """
        for span, sure in ((2, timedelta(hours=22)), (days, None)):
            for at in self._boundaries(minutes, now, span):
                if self._holds(at) is allowed:
                    if sure is None or at < now + sure:
                        return at
                    break  # a later day may yet hold an earlier one: search them all
        return None

    def _boundaries(self, minutes: list[int], now: datetime, days: int) -> list[datetime]:
        """The UTC instants after `now`, within `days` local days, at which contact may start or
        stop being allowed: where a local time of `minutes` falls in some zone (either side of
        a fold), and where some zone's clocks change (a window opening at a time a gap skips
        opens when the clocks jump over it; clocks going back may land inside a window), in
        order."""
        candidates: set[datetime] = set()
        for tz in self.zones:
            local_now = now.astimezone(tz)
            for day in range(0, days):
                date = (local_now + timedelta(days=day)).date()
                for minute in minutes:
                    naive = datetime.combine(date, time(minute // 60, minute % 60))
                    for fold in (0, 1):
                        at = naive.replace(tzinfo=tz, fold=fold).astimezone(UTC)
                        if at > now:
                            candidates.add(at)
                starts, ends = (
                    datetime.combine(d, time(), tzinfo=tz).astimezone(UTC)
                    for d in (date, date + timedelta(days=1))
                )
                if starts.astimezone(tz).utcoffset() != ends.astimezone(tz).utcoffset():
                    jump = offset_change(starts, ends, tz)
                    if jump > now:
                        candidates.add(jump)
        return sorted(candidates)

    def next_allowed(self, now: datetime) -> datetime:
        """`now` when permitted, else the earliest later instant that is (minute precision).

        Raises ValueError when the windows never open (allowed and quiet cover the day)."""
        if self._holds(now):
            return now
        # Contact is allowed where every zone allows it: such a stretch begins where one zone
        # opens, so the openings in every zone are the candidates.
        alone: datetime | None = None
        if self.fallback is not None:
            try:
                alone = self.fallback.next_allowed(now)
            except ValueError:
                alone = None
        # Each instant before `together` has it as the next opening in every zone: the
        # fallback's first one more than a day before it is allowed (see `permits`), so the
        # search need not go further than a day past it.
        within = None if alone is None else alone + GIVE_WAY_AFTER - now
        together = self._opens_after(now, within)
        if alone is not None and (together is None or together - alone > GIVE_WAY_AFTER):
            return alone
        if together is None:  # only when allowed and quiet cover the day
            raise ValueError("the windows never open")
        return together

    def closes_after(self, now: datetime) -> datetime | None:
        """The first instant after `now` at which contact is no longer allowed (minute
        precision); None when the windows never close. A message must be sent before it.
        `now` should be allowed (a message is emitted only then)."""
        at = now
        # A stretch allowed in every zone may run on into one the fallback decides, and back:
        # follow them to the first instant neither allows (a few at most).
        for _ in range(4):
            if self._holds(at) or self.fallback is None:
                # None when it never closes (a closing minute is never allowed in its own
                # zone); a closing time a gap skips closes the window when the clocks jump (a
                # candidate too).
                ends = self._first(self._closing, at, allowed=False) if self._closing else None
            else:
                # The fallback decides until its own windows close, or until the windows come
                # within a day of opening in every zone together.
                ends = self.fallback.closes_after(at)
                opens = self._opens_after(at, None if ends is None else ends + GIVE_WAY_AFTER - at)
                if opens is not None and (ends is None or opens - GIVE_WAY_AFTER < ends):
                    ends = opens - GIVE_WAY_AFTER
            if ends is None or not self.permits(ends):
                return ends
            at = ends
        return at  # still allowed: an early bound is safe, it only ends the message sooner


def _window(w: LocalWindow | None) -> Window | None:
    return Window.parse(w.start, w.end) if w is not None else None


def zones_of(prefs: ContactPreferences, channel: Channel) -> tuple[ZoneInfo, ...]:
    """The zones the customer's number may be in on a phone channel (phonenumbers' geographic
    zones, however far apart); none on another channel, for a service number (toll-free) or for
    a number that names none."""
    address = prefs.channels.get(channel)
    if channel not in ("sms", "voice") or address is None:
        return ()
    return _number_zones(address.address)


@functools.lru_cache(maxsize=4096)
def _number_zones(number: str) -> tuple[ZoneInfo, ...]:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return ()
    # A service number is answered wherever its owner likes: phonenumbers names every zone of
    # its numbering plan (Guam to Pago Pago for a North American toll-free one), no place.
    if phonenumbers.number_type(parsed) in _SERVICE_NUMBERS:
        return ()
    names = phone_zones.time_zones_for_number(parsed)
    # phonenumbers says "Etc/Unknown" for a number without a region: no zone.
    return tuple(z for z in (known_zone(n) for n in names if n != "Etc/Unknown") if z)


_SERVICE_NUMBERS = frozenset(
    {
        phonenumbers.PhoneNumberType.TOLL_FREE,
        phonenumbers.PhoneNumberType.PREMIUM_RATE,
        phonenumbers.PhoneNumberType.SHARED_COST,
        phonenumbers.PhoneNumberType.UAN,
    }
)


def region_of(prefs: ContactPreferences, channel: Channel) -> str:
    """The region (ISO 3166) of the customer's number on a phone channel; 'default' else."""
    address = prefs.channels.get(channel)
    if channel not in ("sms", "voice") or address is None:
        return "default"
    return _number_region(address.address)


@functools.lru_cache(maxsize=4096)
def _number_region(number: str) -> str:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return "default"
    return phonenumbers.region_code_for_number(parsed) or "default"


# The zone most of a region's people live in, for the regions that span several zones (CLDR
# lists a region's zones in no such order); a region of one zone has that one.
MAIN_ZONES: Mapping[str, str] = {
    "AR": "America/Argentina/Buenos_Aires",
    "AU": "Australia/Sydney",
    "BR": "America/Sao_Paulo",
    "CA": "America/Toronto",
    "CD": "Africa/Kinshasa",
    "CL": "America/Santiago",
    "CN": "Asia/Shanghai",
    "CY": "Asia/Nicosia",
    "DE": "Europe/Berlin",
    "EC": "America/Guayaquil",
    "ES": "Europe/Madrid",
    "FM": "Pacific/Chuuk",
    "GL": "America/Nuuk",
    "ID": "Asia/Jakarta",
    "KI": "Pacific/Tarawa",
    "KZ": "Asia/Almaty",
    "MH": "Pacific/Majuro",
    "MN": "Asia/Ulaanbaatar",
    "MX": "America/Mexico_City",
    "MY": "Asia/Kuala_Lumpur",
    "NZ": "Pacific/Auckland",
    "PF": "Pacific/Tahiti",
    "PG": "Pacific/Port_Moresby",
    "PS": "Asia/Gaza",
    "PT": "Europe/Lisbon",
    "RU": "Europe/Moscow",
    "UA": "Europe/Kyiv",
    "UM": "Pacific/Wake",
    "US": "America/New_York",
    "UZ": "Asia/Tashkent",
}


@functools.lru_cache(maxsize=512)
def region_zone(region: str) -> ZoneInfo | None:
    """The main zone of a region (ISO 3166, as `region_of` gives it); None for 'default', a
    non-geographic code ('001') or a region CLDR gives no zone."""
    if region in MAIN_ZONES:
        return known_zone(MAIN_ZONES[region])
    zones = get_global("territory_zones").get(region) if len(region) == 2 else None
    return next((z for z in (known_zone(n) for n in zones or ()) if z), None)


def contact_window(
    prefs: ContactPreferences,
    channel: Channel,
    *,
    critical: bool,
    legal_windows: LegalWindows,
    critical_windows: Mapping[str, LocalWindow],
) -> ContactWindow:
    """The customer's quiet hours and the legal window for the channel and the region of the
    customer's number (a service-critical campaign may use its own window per channel).

    On SMS and voice both hold in the customer's zone and in every zone of the number together.
    Where they do not open in all of those together for more than a day (quiet hours and a
    number spanning ten hours, or zones in two hemispheres in the weeks between their clock
    changes), or the number names no zone (toll-free), the customer's own zone decides alone,
    else the main zone of the number's region. A zone name that is not a zone, or the default
    "UTC", is no zone of the customer's: UTC decides only for a customer and a number that say
    nothing of where they are."""
    region = region_of(prefs, channel)
    legal: LocalWindow | None
    if critical and channel in critical_windows:
        legal = critical_windows[channel]
    else:
        by_channel = legal_windows.get(region, legal_windows.get("default", {}))
        legal = by_channel.get(channel)
    allowed = _window(legal)
    quiet = (
        Window.parse(prefs.quiet_hours.start, prefs.quiet_hours.end) if prefs.quiet_hours else None
    )
    # "UTC" is the zone a contact has when nobody said where the customer lives: the number is
    # the better word (a US customer at "UTC" would get 08:00-16:00).
    own = None if prefs.time_zone == UNSAID_ZONE else known_zone(prefs.time_zone)
    main = region_zone(region)
    number_zones = zones_of(prefs, channel)
    alone = ContactWindow(tz=own or main or ZoneInfo("UTC"), allowed=allowed, quiet=quiet)
    if not number_zones:
        return alone
    # Allowed only when allowed in every zone the phone may be in, however far apart (an
    # Australian mobile may be on Cocos, 4.5 hours behind Sydney): a missing or wrong zone
    # narrows the hours and never moves a contact into the night where the phone is. Whether
    # they open together is decided at each instant: a London customer's New Zealand mobile
    # has an hour a day in both, but none in the weeks after one of them changes its clocks
    # and before the other does.
    tz = own or (main if main in number_zones else number_zones[0])
    return ContactWindow(tz=tz, allowed=allowed, quiet=quiet, also=number_zones, fallback=alone)
