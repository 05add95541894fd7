"""Campaign API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from herald_contracts import CaseState, ContactPreferences, utc_now
from herald_kit import HeraldError, PreconditionFailed, Principal, require_scopes, validate_own
from herald_scheduler.adapters.audience import ContactView
from herald_scheduler.adapters.campaigns import ALLOWED, TARGET, CampaignRepository
from herald_scheduler.adapters.history import ContactHistory
from herald_scheduler.adapters.stats import StatsRepository
from herald_scheduler.domain.campaigns import (
    CAMPAIGN_EXAMPLES,
    CampaignIn,
    CampaignStatus,
    ScheduleTrigger,
    audience_reads_cases,
    definition_of,
)
from herald_scheduler.domain.dryrun import DryRunResult, dry_run

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
Reader = Annotated[Principal, Depends(require_scopes("campaigns:read"))]
Writer = Annotated[Principal, Depends(require_scopes("campaigns:write"))]


class Campaign(BaseModel):
    """A campaign as stored: its definition, version and status."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f0c9a4e-2b7d-4c1a-9e55-0d6b1f2a8c31",
                    "version": 2,
                    "status": "active",
                    "definition": CAMPAIGN_EXAMPLES[0],
                    "created_at": "2026-11-20T10:15:00Z",
                    "updated_at": "2026-11-21T08:30:00Z",
                }
            ]
        }
    )

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


def _check_fires(body: CampaignIn, now: datetime) -> None:
    """A schedule that would never fire is refused (422): accepted, it would sit silently."""
    if isinstance(body.trigger, ScheduleTrigger):
        body.trigger.check_fires(now)


def _check_saved(body: CampaignIn, now: datetime) -> None:
    """What a save refuses (422) beyond the model: a schedule that would never fire, an
    audience that can select nobody."""
    _check_fires(body, now)
    if isinstance(body.trigger, ScheduleTrigger):
        body.trigger.check_audience()


def _out(doc: dict[str, Any]) -> Campaign:
    return Campaign(
        id=doc["_id"],
        version=doc["version"],
        status=doc["status"],
        definition=definition_of(doc),
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
    )


def _repo(request: Request) -> CampaignRepository:
    repo: CampaignRepository = request.app.state.campaigns
    return repo


Repo = Annotated[CampaignRepository, Depends(_repo)]


class PreconditionRequired(HeraldError):
    """An update without If-Match could overwrite someone else's version."""

    status = 428
    title = "Precondition required"


def _etag(doc: dict[str, Any]) -> str:
    return f'"{doc["version"]}"'


def _expected_versions(if_match: str | None) -> list[int] | None:
    """The versions an update may replace: those the If-Match ETags name (a list matches when
    one of them is current), or None for `*`, any current version (RFC 9110, 13.1.1)."""
    if if_match is None:
        raise PreconditionRequired(
            "send If-Match with the version you read (its ETag)", field="If-Match"
        )
    if if_match.strip() == "*":
        return None
    versions = []
    for entry in if_match.split(","):  # a campaign ETag is digits: no comma inside one
        value = entry.strip().removeprefix("W/").strip('"')
        if value.isascii() and value.isdigit():
            versions.append(int(value))
    if not versions:
        raise PreconditionFailed(f"If-Match {if_match!r} is not a campaign ETag", field="If-Match")
    return versions


@router.post("", status_code=201, summary="Create a campaign (as a draft).")
async def create(body: CampaignIn, response: Response, repo: Repo, who: Writer) -> Campaign:
    """Validate and store a draft."""
    now = utc_now()
    _check_saved(body, now)
    doc = await repo.create(body, now=now)
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


@router.get("/{campaign_id}", summary="Read a campaign; its ETag is the version.")
async def get(campaign_id: str, response: Response, repo: Repo, who: Reader) -> Campaign:
    """One campaign."""
    doc = await repo.get(campaign_id)
    response.headers["ETag"] = _etag(doc)
    return _out(doc)


@router.put(
    "/{campaign_id}",
    summary="Save a new version of a campaign.",
    responses={
        409: {"description": "The campaign is archived (problem+json)."},
        412: {"description": "If-Match names an older version (problem+json)."},
        428: {"description": "If-Match is missing (problem+json)."},
    },
)
async def update(
    campaign_id: str,
    body: CampaignIn,
    response: Response,
    repo: Repo,
    who: Writer,
    if_match: Annotated[
        str | None,
        Header(
            description=(
                'The ETag you read, e.g. "3"; a list matches when it names the current version, '
                "`*` any current version."
            ),
            examples=['"3"'],
        ),
    ] = None,
) -> Campaign:
    """Replace the definition as version n+1; contacts already under way keep their version."""
    now = utc_now()
    _check_saved(body, now)
    doc = await repo.update(
        campaign_id, body, expected_versions=_expected_versions(if_match), now=now
    )
    response.headers["ETag"] = _etag(doc)
    return _out(doc)


class ChannelStats(BaseModel):
    """Counts per message status on one channel, plus replies."""

    model_config = ConfigDict(extra="allow")

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    undelivered: int = 0
    engaged: int = 0
    suppressed: int = 0
    suppressed_by_reason: dict[str, int] = Field(
        default_factory=dict, description="Contacts suppressed after this channel was chosen."
    )


class CallbackStats(BaseModel):
    """Call-backs the customer asked for in answer to the campaign's messages, by call status."""

    model_config = ConfigDict(extra="allow")

    sent: int = 0
    answered: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = Field(
        default_factory=dict, description="Call-backs that failed, by reason."
    )


class CampaignStats(BaseModel):
    """What a campaign did so far."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "campaign_id": "3f0c9a4e-2b7d-4c1a-9e55-0d6b1f2a8c31",
                    "requested": 1200,
                    "channels": {
                        "sms": {
                            "sent": 1100,
                            "delivered": 1050,
                            "failed": 20,
                            "undelivered": 30,
                            "engaged": 140,
                            "suppressed": 12,
                            "suppressed_by_reason": {"frequency-cap": 12},
                        },
                        "email": {
                            "sent": 40,
                            "delivered": 38,
                            "failed": 2,
                            "undelivered": 0,
                            "engaged": 9,
                            "suppressed": 0,
                            "suppressed_by_reason": {},
                        },
                    },
                    "failed_by_reason": {"30003": 30, "30005": 20, "bounced": 2},
                    "suppressed_by_reason": {
                        "frequency-cap": 12,
                        "no-consent": 30,
                        "expired": 6,
                    },
                    "replies_by_intent": {"stop": 3, "callback": 7},
                    "callbacks": {
                        "sent": 6,
                        "answered": 5,
                        "failed": 1,
                        "no-answer": 1,
                        "failed_by_reason": {"outside-window": 1},
                    },
                }
            ]
        }
    )

    campaign_id: str
    requested: int
    audience_errors: int = Field(
        default=0,
        description=(
            "Customers of scheduled fires whose audience filter could not be evaluated for "
            "their values (not contacted); each fire's count is on its fire row too."
        ),
    )
    channels: dict[str, ChannelStats]
    failed_by_reason: dict[str, int] = Field(
        description=(
            "Failed and undelivered messages by the provider's error code or reason, and "
            "contacts the dispatcher failed before any message went out by its rule (`render`, "
            "`segment-limit`, `still-applies`; in the channel's `failed` when one was chosen)."
        ),
    )
    suppressed_by_reason: dict[str, int] = Field(
        default_factory=dict,
        description="Contacts the dispatcher decided against, by reason (all channels).",
    )
    replies_by_intent: dict[str, int]
    callbacks: CallbackStats = Field(
        default_factory=CallbackStats,
        description=(
            "Calls placed because the customer asked to be called back in answer to one of the "
            "campaign's messages (not in `channels`: the campaign did not choose to call)."
        ),
    )


@router.get("/{campaign_id}/stats", summary="Requests, statuses and replies per channel.")
async def stats(campaign_id: str, request: Request, repo: Repo, who: Reader) -> CampaignStats:
    """Counters from delivery.status.v1 and engagement.replies.v1."""
    await repo.get(campaign_id)
    store: StatsRepository = request.app.state.stats
    return CampaignStats.model_validate(await store.get(campaign_id))


for _action in ("activate", "pause", "resume", "archive"):

    def _make(action: str) -> Any:
        async def transition(campaign_id: str, repo: Repo, who: Writer) -> Campaign:
            now = utc_now()
            if TARGET[action] == "active":
                # A draft's `at` may have passed since it was saved, or while it was paused.
                doc = await repo.get(campaign_id)
                if doc["status"] in ALLOWED[action]:  # else the 409 says why it cannot
                    _check_fires(definition_of(doc), now)
            return _out(await repo.transition(campaign_id, action, now=now))

        transition.__doc__ = f"{action.capitalize()} a campaign."
        return transition

    router.add_api_route(
        f"/{{campaign_id}}/{_action}",
        _make(_action),
        methods=["POST"],
        summary=f"{_action.capitalize()} a campaign.",
        name=f"{_action}_campaign",
        response_model=Campaign,
        responses={
            409: {
                "description": (
                    "The campaign's status does not allow this change (problem+json, field "
                    "`status`)."
                )
            }
        },
    )


class DryRunIn(BaseModel):
    """A campaign draft and a sample to judge it against."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "campaign": {
                        "name": "Delayed parcels",
                        "topic": "service-updates",
                        "trigger": {
                            "kind": "event",
                            "event_types": ["case.updated"],
                            "filter": 'case.status == "delayed"',
                        },
                        "messages": {"sms": {"en": {"body": "{{ case.status }}"}}},
                    },
                    "cases": [
                        {
                            "case_id": "case-1",
                            "version": 3,
                            "customer_ids": ["cust-1"],
                            "status": "delayed",
                            "updated_at": "2026-03-02T10:00:00Z",
                        }
                    ],
                }
            ]
        },
    )

    campaign: CampaignIn
    cases: list[CaseState] = Field(
        default_factory=list,
        max_length=200,
        description=(
            "Sample cases: for event triggers, the changes to match; for an audience that "
            "reads `cases`, the customers' cases."
        ),
    )
    customers: list[str] | None = Field(
        default=None,
        max_length=1000,
        description=(
            "Audience sample (schedule triggers); default: the first customers known. A customer "
            "listed more than once is judged once, as a fire contacts each customer once."
        ),
    )
    at: AwareDatetime | None = Field(default=None, description="Pretend it is this time.")


def _contacts(request: Request) -> ContactView:
    view: ContactView = request.app.state.contacts
    return view


Contacts = Annotated[ContactView, Depends(_contacts)]


@router.post(
    "/dry-run",
    summary="Who a campaign draft would contact, on which channel and when; nothing is sent.",
)
async def dry_run_draft(
    body: DryRunIn, request: Request, contacts: Contacts, who: Reader
) -> DryRunResult:
    """Predict contacts from the customers' current preferences, quiet hours and caps."""
    limit: int = contacts.dry_run_limit
    customers = body.customers
    trigger = body.campaign.trigger
    if customers is None:
        by_cases = not isinstance(trigger, ScheduleTrigger) or (
            body.cases and audience_reads_cases(trigger.audience)
        )
        if by_cases:
            # Event triggers, and audiences over the sample cases: the cases' customers.
            customers = sorted({c for case in body.cases for c in case.customer_ids})
        else:
            customers = [d["_id"] for d in await contacts.page(after="", limit=limit)]
    snapshots = await contacts.get_many(customers)
    known = {
        cid: validate_own(ContactPreferences, p, kind="contacts") for cid, p in snapshots.items()
    }
    history: ContactHistory = request.app.state.history
    return dry_run(
        body.campaign,
        cases=body.cases,
        customers=customers,
        contacts=known,
        now=body.at or utc_now(),
        caps=request.app.state.settings.caps,
        history=await history.sent_times(customers, body.campaign.priority.value),
        legal_windows=request.app.state.settings.legal_windows,
        critical_windows=request.app.state.settings.critical_windows,
    )
