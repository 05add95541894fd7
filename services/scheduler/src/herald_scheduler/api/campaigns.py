"""Campaign API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from herald_contracts import utc_now
from herald_kit import Principal, require_scopes
from herald_scheduler.adapters.campaigns import CampaignRepository
from herald_scheduler.domain.campaigns import CampaignIn, CampaignStatus

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
Reader = Annotated[Principal, Depends(require_scopes("campaigns:read"))]
Writer = Annotated[Principal, Depends(require_scopes("campaigns:write"))]


class Campaign(BaseModel):
    """A campaign as stored: its definition, version and status."""

    id: str
    version: int
    status: CampaignStatus
    definition: CampaignIn
    created_at: datetime
    updated_at: datetime


class CampaignPage(BaseModel):
    """A page of campaigns; pass `next` as `after` for the following page."""

    items: list[Campaign]
    next: str | None


def _out(doc: dict[str, Any]) -> Campaign:
    return Campaign(
        id=doc["_id"],
        version=doc["version"],
        status=doc["status"],
        definition=CampaignIn.model_validate(doc["definition"]),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
    )


def _repo(request: Request) -> CampaignRepository:
    repo: CampaignRepository = request.app.state.campaigns
    return repo


Repo = Annotated[CampaignRepository, Depends(_repo)]


@router.post("", status_code=201, summary="Create a campaign (as a draft).")
async def create(body: CampaignIn, response: Response, repo: Repo, who: Writer) -> Campaign:
    """Validate and store a draft."""
    doc = await repo.create(body, now=utc_now())
    response.headers["Location"] = f"/v1/campaigns/{doc['_id']}"
    return _out(doc)


@router.get("", summary="List campaigns.")
async def list_campaigns(
    repo: Repo,
    who: Reader,
    status: CampaignStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    after: str | None = None,
) -> CampaignPage:
    """Campaigns in id order."""
    docs = await repo.page(status=status, limit=limit, after=after)
    return CampaignPage(
        items=[_out(d) for d in docs], next=docs[-1]["_id"] if len(docs) == limit else None
    )


@router.get("/{campaign_id}", summary="Read a campaign.")
async def get(campaign_id: str, repo: Repo, who: Reader) -> Campaign:
    """One campaign."""
    return _out(await repo.get(campaign_id))


for _action in ("activate", "pause", "resume", "archive"):

    def _make(action: str) -> Any:
        async def transition(campaign_id: str, repo: Repo, who: Writer) -> Campaign:
            return _out(await repo.transition(campaign_id, action, now=utc_now()))

        transition.__doc__ = f"{action.capitalize()} a campaign."
        return transition

    router.add_api_route(
        f"/{{campaign_id}}/{_action}",
        _make(_action),
        methods=["POST"],
        summary=f"{_action.capitalize()} a campaign.",
        name=f"{_action}_campaign",
        response_model=Campaign,
    )
