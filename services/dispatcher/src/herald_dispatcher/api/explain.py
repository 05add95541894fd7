"""Explain API: why did, or didn't, this customer hear from us?"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from herald_dispatcher.adapters.store import Decisions
from herald_kit import InvalidInput, Principal, require_scopes

router = APIRouter(prefix="/v1/decisions", tags=["decisions"])
Reader = Annotated[Principal, Depends(require_scopes("decisions:read"))]


def _decisions(request: Request) -> Decisions:
    d: Decisions = request.app.state.decisions
    return d


Store = Annotated[Decisions, Depends(_decisions)]


Limit = Annotated[int, Query(ge=1, le=500, description="Decisions per page.")]
After = Annotated[str | None, Query(description="The `next` of the previous page.")]


def _cursor(doc: dict[str, Any]) -> str:
    """An opaque position after this decision: its time and id."""
    at: datetime = doc["at"]
    raw = json.dumps([at.isoformat(), doc["_id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _position(after: str | None) -> tuple[datetime, str] | None:
    if after is None:
        return None
    try:
        padded = after + "=" * (-len(after) % 4)
        at, key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return datetime.fromisoformat(at), str(key)
    except (ValueError, TypeError) as exc:  # not base64, not JSON, not [time, id]
        raise InvalidInput("not a cursor this API gave", field="after") from exc


async def _page(store: Decisions, limit: int, after: str | None, **query: str) -> dict[str, Any]:
    """One page of decisions and the cursor of the next (None on the last page)."""
    docs = await store.find(after=_position(after), limit=limit + 1, **query)
    more = len(docs) > limit
    docs = docs[:limit]
    following = _cursor(docs[-1]) if more and docs else None
    for d in docs:
        d.pop("_id")
    return {"items": docs, "next": following}


@router.get("/customers/{customer_id}", summary="Decisions about a customer, a page at a time.")
async def by_customer(
    customer_id: str, store: Store, who: Reader, limit: Limit = 100, after: After = None
) -> dict[str, Any]:
    """Decisions, oldest first, with rule and inputs; `next` reads on."""
    return await _page(store, limit, after, customer_id=customer_id)


@router.get("/cases/{case_id}", summary="Decisions about a case, a page at a time.")
async def by_case(
    case_id: str, store: Store, who: Reader, limit: Limit = 100, after: After = None
) -> dict[str, Any]:
    """Decisions, oldest first, with rule and inputs; `next` reads on."""
    return await _page(store, limit, after, case_id=case_id)


@router.get("/requests/{request_id}", summary="Decisions on one contact request, a page at a time.")
async def by_request(
    request_id: str, store: Store, who: Reader, limit: Limit = 100, after: After = None
) -> dict[str, Any]:
    """Decisions, oldest first, with rule and inputs; `next` reads on."""
    return await _page(store, limit, after, request_id=request_id)
