"""Paging for lists read oldest first, by a time field.

A cursor names the last item's time and how many items with exactly that time were read so
far; the next page starts at that time and skips those. Items sharing a time keep the order the
database gives them (the order they were written in), which a tie-break on some other field
would not: a test clock that stands still, or two decisions in one millisecond, still read in
the order they were made."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import Query

from herald_kit._errors import InvalidInput
from herald_kit._mongo import Doc

PageLimit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
PageAfter = Annotated[str | None, Query(description="The `next` of the previous page.")]
Position = tuple[datetime, int]


def position(after: str | None) -> Position | None:
    """The position a cursor names; 422 naming `after` when it is not one this API gave."""
    if after is None:
        return None
    try:
        padded = after + "=" * (-len(after) % 4)
        at, seen = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(seen, int) or seen < 0:
            raise TypeError("a count of items read")
        return datetime.fromisoformat(at), seen
    except (ValueError, TypeError) as exc:  # not base64, not JSON, not [time, count]
        raise InvalidInput("not a cursor this API gave", field="after") from exc


def after(where: Doc, start: Position | None, *, field: str = "at") -> tuple[Doc, int]:
    """`where` from `start`'s time on, and how many items to skip there (read already)."""
    if start is None:
        return where, 0
    at, seen = start
    return {**where, field: {"$gte": at}}, seen


def page(
    docs: list[Doc], limit: int, start: Position | None, *, field: str = "at"
) -> dict[str, Any]:
    """Items and the next cursor (None on the last page), from up to `limit` + 1 documents
    read in order from `start` (one more than a page says whether another follows)."""
    more = len(docs) > limit
    docs = docs[:limit]
    following = None
    if more and docs:
        last: datetime = docs[-1][field]
        seen = sum(1 for d in docs if d[field] == last)
        if start is not None and start[0] == last:
            seen += start[1]  # a run of one time across pages
        raw = json.dumps([last.isoformat(), seen]).encode()
        following = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return {"items": docs, "next": following}
