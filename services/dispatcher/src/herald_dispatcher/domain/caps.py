"""Frequency caps: how many contacts one customer may receive per day and per week."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

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
