"""Contacts API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response

from herald_contracts import CONTACT_PREFERENCES, ContactPreferences, utc_now
from herald_kit import InvalidInput, NotFound, PreconditionFailed, Principal, require_scopes
from herald_preferences.adapters.repository import ContactRepository
from herald_preferences.config import Settings
from herald_preferences.domain.contacts import ContactIn
from herald_preferences.domain.service import consent_changes, snapshot, to_document

router = APIRouter(prefix="/v1/contacts", tags=["contacts"])
Reader = Annotated[Principal, Depends(require_scopes("preferences:read"))]
Writer = Annotated[Principal, Depends(require_scopes("preferences:write"))]


def _repo(request: Request) -> ContactRepository:
    repo: ContactRepository = request.app.state.repo
    return repo


Repo = Annotated[ContactRepository, Depends(_repo)]


async def _publish(request: Request, snap: ContactPreferences) -> None:
    await request.app.state.runtime.producer.publish(
        CONTACT_PREFERENCES,
        snap,
        key=snap.customer_id,
        subject=snap.customer_id,
        event_id=f"{snap.customer_id}:{snap.version}",
    )


def _etag(version: int) -> str:
    return f'"{version}"'


@router.post("", status_code=201, summary="Create a contact.")
async def create_contact(
    request: Request, response: Response, body: ContactIn, repo: Repo, who: Writer
) -> ContactPreferences:
    """Create a contact and publish its snapshot."""
    settings: Settings = request.app.state.settings
    now = utc_now()
    doc = to_document(body, region=settings.default_region, version=1, now=now)
    await repo.create(doc)
    await repo.append_consents(
        body.customer_id, consent_changes({}, doc["consents"]), source="api", actor=who.name, at=now
    )
    snap = snapshot(doc)
    await _publish(request, snap)
    response.headers["ETag"] = _etag(snap.version)
    response.headers["Location"] = f"/v1/contacts/{body.customer_id}"
    return snap


@router.put("/{customer_id}", summary="Replace a contact (If-Match for concurrency).")
async def replace_contact(
    request: Request,
    response: Response,
    customer_id: str,
    body: ContactIn,
    repo: Repo,
    who: Writer,
    if_match: Annotated[str | None, Header()] = None,
) -> ContactPreferences:
    """Replace a contact's preferences."""
    if body.customer_id != customer_id:
        raise InvalidInput("customer_id must match the path", field="customer_id")
    settings: Settings = request.app.state.settings
    current = await repo.get(customer_id)
    if current is None:
        raise NotFound(f"no contact {customer_id!r}")
    expected = current["version"]
    if if_match is not None and if_match.strip('W/"') != str(expected):
        raise PreconditionFailed("the contact changed since it was read", field="If-Match")
    now = utc_now()
    doc = to_document(body, region=settings.default_region, version=expected + 1, now=now)
    stored = await repo.replace(doc, expected_version=expected)
    await repo.append_consents(
        customer_id,
        consent_changes(current.get("consents", {}), doc["consents"]),
        source="api",
        actor=who.name,
        at=now,
    )
    snap = snapshot(stored)
    await _publish(request, snap)
    response.headers["ETag"] = _etag(snap.version)
    return snap


@router.get("/{customer_id}", summary="Read a contact.")
async def get_contact(
    customer_id: str, response: Response, repo: Repo, who: Reader
) -> ContactPreferences:
    """A contact's current preferences."""
    doc = await repo.get(customer_id)
    if doc is None:
        raise NotFound(f"no contact {customer_id!r}")
    response.headers["ETag"] = _etag(doc["version"])
    return snapshot(doc)
