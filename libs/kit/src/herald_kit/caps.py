"""Frequency caps: how many contacts one customer may receive per day and per week.

Pure rules shared by the dispatcher (which applies them at send time) and the scheduler's dry
run (which predicts them), so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

DAY = timedelta(days=1)
WEEK = timedelta(days=7)


class CapLimits(BaseModel):
    """Limits for one priority; None means no limit for that period."""

    per_day: int | None = Field(default=None, ge=0)
    per_week: int | None = Field(default=None, ge=0)


@dataclass(frozen=True, slots=True)
class CapVerdict:
    """Whether a contact fits; when not, the earliest moment it would, and which cap bit."""

    allowed: bool
    cap: str | None = None
    retry_at: datetime | None = None


def check_caps(sent: Sequence[datetime], now: datetime, limits: CapLimits) -> CapVerdict:
    """Rolling windows: at most per_day contacts in any 24 h and per_week in any 7 days.

    `sent` are the times of earlier contacts of the same priority (any order).
    """
    retry_at: datetime | None = None
    cap: str | None = None
    for name, limit, span in (
        ("per-day", limits.per_day, DAY),
        ("per-week", limits.per_week, WEEK),
    ):
        if limit is None:
            continue
        inside = sorted(t for t in sent if now - span < t <= now)
        if len(inside) < limit:
            continue
        if limit == 0:
            return CapVerdict(False, name, None)  # never: nothing ages out of a zero cap
        # The contact fits once enough of the oldest ones age out of the window.
        frees_at = inside[len(inside) - limit] + span
        if retry_at is None or frees_at > retry_at:
            retry_at, cap = frees_at, name
    if cap is None:
        return CapVerdict(True)
    return CapVerdict(False, cap, retry_at)


def default_caps() -> dict[str, CapLimits]:
    """Caps per priority when none are configured."""
    return {
        "service": CapLimits(per_day=6, per_week=20),
        "marketing": CapLimits(per_day=1, per_week=3),
    }


@dataclass(frozen=True, slots=True)
class CapDecision:
    """What a cap does to one contact: nothing, defer it to `due`, or suppress it."""

    action: Literal["allow", "defer", "suppress"]
    cap: str | None = None
    due: datetime | None = None


def apply_caps(
    sent: Sequence[datetime],
    now: datetime,
    limits: CapLimits,
    *,
    policy: Literal["defer", "suppress"],
    counts_towards_cap: bool = True,
) -> CapDecision:
    """A campaign's cap outcome for one contact: a contact that does not count is never capped;
    a capped one is suppressed by policy, or when nothing ever frees (a zero cap), else deferred
    to when the cap frees (the caller still moves that into the contact windows)."""
    if not counts_towards_cap:
        return CapDecision("allow")
    verdict = check_caps(sent, now, limits)
    if verdict.allowed:
        return CapDecision("allow")
    if policy == "suppress" or verdict.retry_at is None:
        return CapDecision("suppress", verdict.cap)
    return CapDecision("defer", verdict.cap, verdict.retry_at)
