"""Case read API."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from herald_contracts import CaseState
from herald_ingest.adapters.repository import CaseRepository
from herald_kit import NotFound, Principal, require_scopes
from herald_kit.paging import PageAfter, PageLimit, page, position

router = APIRouter(prefix="/v1", tags=["cases"])
Reader = Annotated[Principal, Depends(require_scopes("cases:read"))]


def _repo(request: Request) -> CaseRepository:
    repo: CaseRepository = request.app.state.repo
    return repo


Repo = Annotated[CaseRepository, Depends(_repo)]


@router.get("/cases/{case_id}", summary="The latest state of a case.")
async def get_case(case_id: str, repo: Repo, who: Reader) -> CaseState:
    """The case's current, versioned state."""
    state = await repo.get(case_id)
    if state is None:
        raise NotFound(f"no case {case_id!r}")
    return state


@router.get("/cases/{case_id}/timeline", summary="Everything that happened on a case.")
async def get_timeline(
    case_id: str, repo: Repo, who: Reader, limit: PageLimit = 100, after: PageAfter = None
) -> dict[str, Any]:
    """Events, contacts and replies, oldest first, a page at a time (`next` reads on)."""
    start = position(after)
    if await repo.get(case_id) is None:
        raise NotFound(f"no case {case_id!r}")
    docs = await repo.timeline_of(case_id, start=start, limit=limit + 1)
    return {"case_id": case_id, **page(docs, limit, start)}


@router.get("/customers/{customer_id}/cases", summary="A customer's cases, newest first.")
async def cases_of_customer(customer_id: str, repo: Repo, who: Reader) -> dict[str, Any]:
    """Cases naming the customer."""
    items = await repo.by_customer(customer_id)
    return {"customer_id": customer_id, "items": [c.model_dump(mode="json") for c in items]}
