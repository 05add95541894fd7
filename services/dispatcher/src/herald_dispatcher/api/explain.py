"""Explain API: why did, or didn't, this customer hear from us?"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from herald_dispatcher.adapters.store import Decisions
from herald_kit import Principal, require_scopes
from herald_kit.paging import PageAfter, PageLimit, page, position

router = APIRouter(prefix="/v1/decisions", tags=["decisions"])
Reader = Annotated[Principal, Depends(require_scopes("decisions:read"))]


def _decisions(request: Request) -> Decisions:
    d: Decisions = request.app.state.decisions
    return d


Store = Annotated[Decisions, Depends(_decisions)]


async def _page(store: Decisions, limit: int, after: str | None, **query: str) -> dict[str, Any]:
    """One page of decisions and the cursor of the next (None on the last page)."""
    start = position(after)
    return page(await store.find(start=start, limit=limit + 1, **query), limit, start)


@router.get("/customers/{customer_id}", summary="Decisions about a customer, a page at a time.")
async def by_customer(
    customer_id: str, store: Store, who: Reader, limit: PageLimit = 100, after: PageAfter = None
) -> dict[str, Any]:
    """Decisions, oldest first, with rule and inputs; `next` reads on."""
    return await _page(store, limit, after, customer_id=customer_id)


@router.get("/cases/{case_id}", summary="Decisions about a case, a page at a time.")
async def by_case(
    case_id: str, store: Store, who: Reader, limit: PageLimit = 100, after: PageAfter = None
) -> dict[str, Any]:
    """Decisions, oldest first, with rule and inputs; `next` reads on."""
    return await _page(store, limit, after, case_id=case_id)


@router.get("/requests/{request_id}", summary="Decisions on one contact request, a page at a time.")
async def by_request(
    request_id: str, store: Store, who: Reader, limit: PageLimit = 100, after: PageAfter = None
) -> dict[str, Any]:
    """Decisions, oldest first, with rule and inputs; `next` reads on."""
    return await _page(store, limit, after, request_id=request_id)
