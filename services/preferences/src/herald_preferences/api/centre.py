"""The customer-facing preference centre: GET/POST /p/{token}, a signed, expiring link.

Server-rendered with Jinja2 (autoescaped) in the customer's locale. A POST changes ranking,
quiet hours and per-topic consent; consent changes are recorded in the ledger with source
preference-centre and actor "customer".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError

from herald_contracts import utc_now
from herald_kit import (
    Conflict,
    HeraldError,
    LinkExpired,
    LinkInvalid,
    LinkSigner,
    NotFound,
    PreconditionFailed,
    customer_page_headers,
)
from herald_preferences.adapters.repository import ContactRepository
from herald_preferences.api.i18n import html_lang, pick_locale, words
from herald_preferences.config import Settings
from herald_preferences.domain.centre import contact_from_form
from herald_preferences.domain.contacts import ContactIn
from herald_preferences.domain.service import next_contact
from herald_preferences.messaging.outbox import Outbox

router = APIRouter(tags=["preference centre"])
_env = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
ATTEMPTS = 5


class NotConfigured(HeraldError):
    """The service lacks a setting it needs for this request."""

    status = 503
    title = "Not configured"


def link_signer(settings: Settings) -> LinkSigner:
    """The signer of preference-centre links; 503 when no link secret is configured."""
    secret = settings.link_secret.get_secret_value()
    if not secret:
        raise NotConfigured("no link secret is configured (HERALD_PREFERENCES_LINK_SECRET)")
    return LinkSigner(secret, "preferences")


def _customer(request: Request, token: str) -> str:
    settings: Settings = request.app.state.settings
    signer = link_signer(settings)
    payload = signer.verify(token, max_age_seconds=settings.link_max_age_seconds)
    customer = payload.get("c")
    if payload.get("p") != "preferences" or not isinstance(customer, str):
        raise LinkInvalid("This link is not valid.", field="token")
    return customer


def _topics(settings: Settings, doc: dict[str, Any]) -> list[str]:
    """The topics the page offers: the configured ones, then any other the customer holds.

    The page and its save both use this list: a box the customer unticks on a topic outside
    the configured ones must withdraw that consent, not be skipped while the page says saved.
    """
    return list(dict.fromkeys([*settings.topics, *doc.get("granted", {})]))


def _page(
    request: Request,
    doc: dict[str, Any],
    *,
    status: int = 200,
    saved: bool = False,
    error: str | None = None,
) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    locale = pick_locale(doc.get("locale"), request.headers.get("accept-language"))
    w = words(locale)
    available = [c for c in ("sms", "email", "voice") if c in doc.get("channels", {})]
    topics = _topics(settings, doc)
    html = _env.get_template("centre.html").render(
        w=w,
        lang=html_lang(locale),
        channels=available,
        ranking=list(doc.get("ranking", [])),
        quiet=doc.get("quiet_hours") or {},
        zone=doc.get("time_zone", "UTC"),
        topics=topics,
        granted=doc.get("consents", {}),
        stopped=[c for c in doc.get("stopped", []) if c in available],
        saved=saved,
        error=error,
    )
    return HTMLResponse(html, status_code=status, headers=customer_page_headers())


def _link_problem(request: Request, exc: HeraldError) -> HTMLResponse:
    locale = pick_locale(request.headers.get("accept-language"))
    w = words(locale)
    if isinstance(exc, LinkExpired):
        text = w["expired"]
    elif isinstance(exc, NotFound):
        text = w["gone"]
    else:
        text = w["invalid"]
    html = _env.get_template("message.html").render(
        lang=html_lang(locale), title=w["title"], text=text
    )
    return HTMLResponse(html, status_code=exc.status, headers=customer_page_headers())


def _gone() -> NotFound:
    """An erased or unknown customer's link: 404, the same for both, so nothing tells whether
    the customer was ever known."""
    return NotFound("There is nothing to show for this link.", field="token")


@router.get("/p/{token}", response_class=HTMLResponse, summary="The preference centre page.")
async def centre_page(request: Request, token: str, saved: int = 0) -> Response:
    """Render the customer's preferences in their locale."""
    try:
        customer = _customer(request, token)
    except HeraldError as exc:
        return _link_problem(request, exc)
    repo: ContactRepository = request.app.state.repo
    doc = await repo.get(customer)
    if doc is None or doc.get("erased"):
        return _link_problem(request, _gone())
    return _page(request, doc, saved=bool(saved))


@router.post("/p/{token}", response_class=HTMLResponse, summary="Save the preference centre form.")
async def centre_save(request: Request, token: str) -> Response:
    """Apply the form; 303 back to the page, or the page with the error (422)."""
    try:
        customer = _customer(request, token)
    except HeraldError as exc:
        return _link_problem(request, exc)
    settings: Settings = request.app.state.settings
    repo: ContactRepository = request.app.state.repo
    outbox: Outbox = request.app.state.outbox
    form = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    for _ in range(ATTEMPTS):
        current = await repo.get(customer)
        if current is None or current.get("erased"):
            return _link_problem(request, _gone())
        try:
            raw, lifted = contact_from_form(
                current,
                form,
                topics=_topics(settings, current),
                stopped=current.get("stopped", []),
            )
            body = ContactIn.model_validate(raw)
        except HeraldError as exc:
            return _page(request, current, status=422, error=exc.detail)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return _page(request, current, status=422, error=f"{where}: {first['msg']}")
        ledger = await repo.ledger_of(customer, current)
        now = utc_now()
        doc = next_contact(
            body,
            current=current,
            ledger=ledger,
            region=settings.default_region,
            source="preference-centre",
            actor="customer",
            now=now,
            extra_changes=lifted,
        )
        claim = await outbox.intend(customer)
        try:
            await repo.replace(doc, expected_version=current["version"])
        except PreconditionFailed:
            continue
        await outbox.try_flush(customer, claim)
        # Relative to the page (/p/<token>), so it holds behind a proxy's path prefix too.
        return RedirectResponse(f"{token}?saved=1", status_code=303)
    raise Conflict("the contact kept changing; try again", field="token")
