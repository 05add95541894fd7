"""Keyset paging for lists read oldest first: a page ends with the (time, id) of its last item,
and the next page starts after it. An opaque cursor carries that position; items sharing a
time are told apart by their ids, so none is skipped or read twice."""

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
Position = tuple[datetime, str]
# The sort that matches the filter `after` builds.
OLDEST_FIRST = [("at", 1), ("_id", 1)]


def cursor_after(doc: Doc, *, field: str = "at") -> str:
    """An opaque position just after this item: its time and id."""
    at: datetime = doc[field]
    raw = json.dumps([at.isoformat(), str(doc["_id"])]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def position(after: str | None) -> Position | None:
    """The position a cursor names; 422 naming `after` when it is not one this API gave."""
    if after is None:
        return None
    try:
        padded = after + "=" * (-len(after) % 4)
        at, key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(at), str(key)
    except (ValueError, TypeError) as exc:  # not base64, not JSON, not [time, id]
        raise InvalidInput("not a cursor this API gave", field="after") from exc


def after(where: Doc, start: Position | None, *, field: str = "at") -> Doc:
    """`where`, narrowed to the items after `start` in time-then-id order."""
    if start is None:
        return where
    at, key = start
    return {**where, "$or": [{field: {"$gt": at}}, {field: at, "_id": {"$gt": key}}]}


def page(docs: list[Doc], limit: int) -> dict[str, Any]:
    """Items and the next cursor, from up to `limit` + 1 documents read in order (one more
    than a page says whether another follows); the paging ids are left out of the items."""
    more = len(docs) > limit
    docs = docs[:limit]
    following = cursor_after(docs[-1]) if more and docs else None
    return {"items": [{k: v for k, v in d.items() if k != "_id"} for d in docs], "next": following}
