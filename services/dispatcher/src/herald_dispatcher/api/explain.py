"""Explain API: why did, or didn't, this customer hear from us?"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from herald_dispatcher.adapters.store import Decisions
from herald_kit import Principal, require_scopes

router = APIRouter(prefix="/v1/decisions", tags=["decisions"])
Reader = Annotated[Principal, Depends(require_scopes("decisions:read"))]


def _decisions(request: Request) -> Decisions:
    d: Decisions = request.app.state.decisions
    return d


Store = Annotated[Decisions, Depends(_decisions)]


@router.get("/customers/{customer_id}", summary="Every decision about a customer.")
async def by_customer(customer_id: str, store: Store, who: Reader) -> dict[str, Any]:
    """Decisions, oldest first, with rule and inputs."""
    return {"items": await store.find(customer_id=customer_id)}


@router.get("/cases/{case_id}", summary="Every decision about a case.")
async def by_case(case_id: str, store: Store, who: Reader) -> dict[str, Any]:
    """Decisions, oldest first, with rule and inputs."""
    return {"items": await store.find(case_id=case_id)}


@router.get("/requests/{request_id}", summary="Every decision on one contact request.")
async def by_request(request_id: str, store: Store, who: Reader) -> dict[str, Any]:
    """Decisions, oldest first, with rule and inputs."""
    return {"items": await store.find(request_id=request_id)}
