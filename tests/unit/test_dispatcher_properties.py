"""Property tests of the dispatcher's policy: windows, consent and caps over random inputs.

No SMS or voice call is ever placed outside the legal local window or the customer's quiet
hours, never on a channel without consent, and never over a frequency cap.
"""

from __future__ import annotations

import heapq
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from herald_contracts import (
    CampaignRef,
    ChannelAddress,
    ContactPreferences,
    MessageTemplate,
    QuietHours,
)
from herald_dispatcher.config import Settings
from herald_dispatcher.policy import Dispatcher
from herald_kit.caps import CapLimits, check_caps
from herald_kit.channels import choose_channel
from herald_kit.windows import ContactWindow, Window

ZONES = sorted(
    z for z in zoneinfo.available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/"))
)
CHANNELS = ["sms", "email", "voice"]
T = MessageTemplate(body="hi")
CAMPAIGN = CampaignRef(
    id="c",
    version=1,
    name="n",
    topic="service-updates",
    messages={"sms": {"en": T}, "email": {"en": T}, "voice": {"en": T}},
)

hhmm = st.builds(
    lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 15, 30, 59])
)
instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)


def _minutes(s: str) -> int:
    return int(s[:2]) * 60 + int(s[3:])


def _inside(minute: int, start: int, end: int) -> bool:
    """Independent of the code under test: is a local minute in [start, end) (wrapping)?"""
    if start == end:
        return True
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def _dispatcher(**overrides: Any) -> Dispatcher:
    # contact_window reads only settings; the stores and producer are not touched.
    return Dispatcher(None, None, None, None, Settings(**overrides))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tz=st.sampled_from(ZONES),
    quiet=st.none() | st.tuples(hhmm, hhmm),
    ranking=st.lists(st.sampled_from(CHANNELS), unique=True),
    consents=st.dictionaries(st.sampled_from(CHANNELS), st.booleans()),
    now=instants,
    critical=st.booleans(),
)
def test_never_outside_windows_never_without_consent(
    tz: str,
    quiet: tuple[str, str] | None,
    ranking: list[str],
    consents: dict[str, bool],
    now: datetime,
    critical: bool,
) -> None:
    prefs = ContactPreferences(
        customer_id="x",
        version=1,
        channels={c: ChannelAddress(address="+447700900123") for c in CHANNELS},  # type: ignore[misc]
        ranking=ranking,  # type: ignore[arg-type]
        consents={"service-updates": consents},  # type: ignore[dict-item]
        time_zone=tz,
        quiet_hours=QuietHours(start=quiet[0], end=quiet[1]) if quiet else None,
        updated_at=now,
    )
    dispatcher = _dispatcher()
    choice = choose_channel(prefs, CAMPAIGN)
    if choice.channel is None:
        assert not any(consents.get(c) for c in ranking)
        return
    assert consents[choice.channel] is True
    window = dispatcher.contact_window(prefs, choice.channel, critical=critical)
    try:
        at = window.next_allowed(now)
    except ValueError:
        # Only when the customer's quiet hours cover the whole legal window.
        assert quiet is not None
        return
    assert at >= now
    local = at.astimezone(zoneinfo.ZoneInfo(tz))
    minute = local.hour * 60 + local.minute
    if choice.channel in ("sms", "voice"):
        assert 8 * 60 <= minute < 21 * 60, f"{choice.channel} at {local.isoformat()}"
    if quiet is not None and quiet[0] != quiet[1]:
        assert not _inside(minute, _minutes(quiet[0]), _minutes(quiet[1]))


@settings(max_examples=150, deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    allowed=st.tuples(hhmm, hhmm),
    quiet=st.none() | st.tuples(hhmm, hhmm),
    now=instants,
)
def test_next_allowed_is_the_earliest_allowed_minute(
    tz: str, allowed: tuple[str, str], quiet: tuple[str, str] | None, now: datetime
) -> None:
    window = ContactWindow(
        tz=zoneinfo.ZoneInfo(tz),
        allowed=Window.parse(*allowed),
        quiet=Window.parse(*quiet) if quiet else None,
    )
    try:
        at = window.next_allowed(now)
    except ValueError:
        # Never open: no minute of the next two days is allowed.
        start = now.replace(second=0, microsecond=0)
        assert not any(window.permits(start + timedelta(minutes=m)) for m in range(0, 2 * 1440, 5))
        return
    assert window.permits(at)
    # No earlier whole minute after now was allowed.
    step = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while step < at and step - now < timedelta(days=2):
        assert not window.permits(step), f"{step} was allowed before {at}"
        step += timedelta(minutes=1)


@settings(max_examples=200, deadline=None)
@given(
    per_day=st.none() | st.integers(0, 5),
    per_week=st.none() | st.integers(0, 12),
    gaps=st.lists(st.integers(0, 36 * 3600), min_size=1, max_size=40),
    policy=st.sampled_from(["defer", "suppress"]),
)
def test_never_over_a_cap(
    per_day: int | None, per_week: int | None, gaps: list[int], policy: str
) -> None:
    """Requests arrive; deferred ones come back at the time the cap names; count every window."""
    assume(per_day is not None or per_week is not None)
    limits = CapLimits(per_day=per_day, per_week=per_week)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    queue: list[tuple[datetime, int]] = []
    t = start
    for i, gap in enumerate(gaps):
        t += timedelta(seconds=gap)
        heapq.heappush(queue, (t, i))
    sent: list[datetime] = []
    handled = 0
    while queue and handled < 500:
        now, i = heapq.heappop(queue)
        handled += 1
        verdict = check_caps(sent, now, limits)
        if verdict.allowed:
            sent.append(now)
        elif policy == "defer" and verdict.retry_at is not None:
            assert verdict.retry_at > now
            assert check_caps(sent, verdict.retry_at, limits).allowed
            heapq.heappush(queue, (verdict.retry_at, i))
    for at in sent:
        if per_day is not None:
            assert sum(1 for s in sent if at - timedelta(days=1) < s <= at) <= per_day
        if per_week is not None:
            assert sum(1 for s in sent if at - timedelta(days=7) < s <= at) <= per_week
