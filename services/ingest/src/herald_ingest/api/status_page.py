"""The customer's case status page: a signed, expiring link shows the latest state and timeline,
with buttons that send the customer's answer to engagement.replies.v1."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from typing import Annotated, Any
from urllib.parse import parse_qs

import phonenumbers
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field, field_validator

from herald_contracts import ENGAGEMENT_REPLY, EngagementReply, utc_now
from herald_ingest.adapters.repository import CaseRepository
from herald_ingest.config import Settings
from herald_ingest.domain.status_text import BUTTONS, page_zone, pick_locale, when, words
from herald_ingest.web.templates import message_template, status_template
from herald_kit import (
    EventProducer,
    HeraldError,
    InvalidInput,
    LinkExpired,
    LinkInvalid,
    LinkSigner,
    NotFound,
    Principal,
    broker_wait,
    customer_page_headers,
    require_scopes,
)

router = APIRouter(tags=["status page"])
Reader = Annotated[Principal, Depends(require_scopes("cases:read"))]
PURPOSE = "case-status"
FIELDS = ("status", "summary", "next_step", "assigned_team", "assigned_engineer")
# The page's forms carry a value the page issues anew for each view: a random nonce and an HMAC,
# under the link secret, of the link and that nonce. The answer's id derives from it, so
# submitting one form twice is one answer, and each new form a new one; a value the page did
# not issue (made up by whoever holds the link, or posted from another site that never fetched
# the page) is refused before anything is published.
SUBMISSION = "submission"
_SUBMISSION_RE = re.compile(r"^([0-9a-f]{32})\.([0-9a-f]{64})$")
# What a call-back may dial: numbers a customer answers. Premium-rate, shared-cost, UAN,
# personal (forwarding), pager, toll-free, voicemail and unknown numbers cost or reach someone
# else, and would let whoever holds a link make Herald call them for profit.
CALLABLE = frozenset(
    {
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
        phonenumbers.PhoneNumberType.VOIP,
    }
)


class NotConfigured(HeraldError):
    """The service lacks a setting it needs for this request."""

    status = 503
    title = "Not configured"


class NotCallable(InvalidInput):
    """A valid number of a kind a call-back does not dial (premium rate, shared cost, ...)."""


class TooManyCallbacks(HeraldError):
    """The link has asked for as many call-backs today as one link may."""

    status = 429
    title = "Too many call-back requests"


def _signer(request: Request) -> LinkSigner:
    """The signer of status links; 503 when no link secret is configured."""
    settings: Settings = request.app.state.settings
    secret = settings.link_secret.get_secret_value()
    if not secret:
        raise NotConfigured("no link secret is configured (HERALD_INGEST_LINK_SECRET)")
    return LinkSigner(secret, PURPOSE)


def _submission_mac(request: Request, token: str, nonce: str) -> str:
    settings: Settings = request.app.state.settings
    key = settings.link_secret.get_secret_value().encode()
    return hmac.new(key, f"herald:status-form:{token}:{nonce}".encode(), hashlib.sha256).hexdigest()


def _new_submission(request: Request, token: str) -> str:
    """A value for one rendering of the page's forms, which only this service can issue."""
    nonce = secrets.token_hex(16)
    return f"{nonce}.{_submission_mac(request, token, nonce)}"


def _check_submission(request: Request, token: str, value: str) -> None:
    """InvalidInput unless the value was issued by this service for this link's page."""
    match = _SUBMISSION_RE.match(value)
    if match is None or not hmac.compare_digest(
        match.group(2), _submission_mac(request, token, match.group(1))
    ):
        raise InvalidInput(
            "the form's submission value is missing or was not issued by this page",
            field=SUBMISSION,
        )


def _verify(request: Request, token: str) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    claims = _signer(request).verify(token, max_age_seconds=settings.status_link_max_age_seconds)
    if not isinstance(claims.get("case"), str) or not isinstance(claims.get("customer"), str):
        raise LinkInvalid("This link is not valid.", field="token")
    return claims


class LinkRequest(BaseModel):
    """Whom the link is for."""

    customer_id: str = Field(min_length=1, max_length=200)
    locale: str = Field(default="en", pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    time_zone: str = Field(
        default="UTC",
        max_length=64,
        description="The customer's IANA time zone: the page writes times in it.",
        examples=["Europe/London"],
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if page_zone(value) != value:
            raise ValueError("not a known IANA time zone")
        return value


class StatusLink(BaseModel):
    """A signed link to a case's status page for one customer."""

    url: str
    token: str
    expires_in_seconds: int


@router.post(
    "/v1/cases/{case_id}/status-links",
    summary="Sign a link to the case's status page for one of its customers.",
    tags=["cases"],
)
async def create_status_link(
    case_id: str, body: LinkRequest, request: Request, who: Reader
) -> StatusLink:
    """The link messages carry; it names the case and the customer and expires."""
    repo: CaseRepository = request.app.state.repo
    settings: Settings = request.app.state.settings
    state = await repo.get(case_id)
    if state is None:
        raise NotFound(f"no case {case_id!r}")
    if body.customer_id not in state.customer_ids:
        raise InvalidInput("the customer is not on this case", field="customer_id")
    token = _signer(request).sign(
        {"case": case_id, "customer": body.customer_id, "locale": body.locale, "tz": body.time_zone}
    )
    return StatusLink(
        url=f"{settings.base_url()}/s/{token}",
        token=token,
        expires_in_seconds=settings.status_link_max_age_seconds,
    )


def _wants_html(request: Request) -> bool:
    """Whether the client is a browser (it accepts HTML): it gets pages, API clients problems."""
    return "text/html" in request.headers.get("accept", "").lower()


def _problem_page(
    request: Request, exc: HeraldError, link_locale: str | None = None
) -> HTMLResponse:
    """A refused request as a page in the customer's language, with the problem's status."""
    locale = pick_locale(link_locale, request.headers.get("accept-language"))
    t = words(locale)
    if isinstance(exc, LinkExpired):
        text = t["expired"]
    elif isinstance(exc, LinkInvalid):
        text = t["invalid"]
    elif isinstance(exc, NotFound):
        text = t["gone"]
    elif isinstance(exc, NotConfigured):
        text = t["unavailable"]
    else:
        text = t["refused"]
    html = message_template.render(locale=locale, title=t["title"], text=text)
    return HTMLResponse(html, status_code=exc.status, headers=customer_page_headers())


async def _render(
    request: Request,
    token: str,
    claims: dict[str, Any],
    *,
    done: str | None = None,
    status: int = 200,
    error: str | None = None,
    number: str = "",
    from_reply: bool = False,
) -> HTMLResponse:
    """The page for a verified link; NotFound when the case is not (or no longer) theirs."""
    repo: CaseRepository = request.app.state.repo
    state = await repo.get(claims["case"])
    if state is None or claims["customer"] not in state.customer_ids:
        # Same answer whether the case is gone or never was this customer's: nothing leaks.
        raise NotFound("There is nothing to show for this link.")
    locale = pick_locale(claims.get("locale"), request.headers.get("accept-language"))
    t = words(locale)
    zone = page_zone(claims.get("tz"))
    html = status_template.render(
        locale=locale,
        t=t,
        case=state.model_dump(),
        fields=FIELDS,
        timeline=await repo.customer_timeline(state.case_id, claims["customer"]),
        buttons=BUTTONS,
        done=done in BUTTONS,
        # Relative to the page (/s/<token>): right behind a proxy that serves ingest under a
        # path prefix (<public base>/ingest/s/<token>) as well as at the root. The page shown
        # again for a refused answer is at /s/<token>/reply itself.
        action="reply" if from_reply else f"{token}/reply",
        submission=_new_submission(request, token),
        error=t[error] if error else None,
        number=number,
        fmt=lambda value: when(value, locale, zone),
    )
    return HTMLResponse(html, status_code=status, headers=customer_page_headers())


@router.get(
    "/s/{token}",
    response_class=HTMLResponse,
    summary="The customer's status page (signed link).",
    responses={
        403: {"description": "Tampered link"},
        404: {"description": "Nothing to show for this link"},
        410: {"description": "Expired link"},
    },
)
async def status_page(token: str, request: Request, done: str | None = None) -> HTMLResponse:
    """The latest state and the timeline, in the customer's language. A browser is shown a
    refused link as a page in its language; an API client gets problem+json."""
    try:
        return await _render(request, token, _verify(request, token), done=done)
    except HeraldError as exc:
        if not _wants_html(request):
            raise
        return _problem_page(request, exc)


@router.post(
    "/s/{token}/reply",
    summary="The customer's answer from the status page (form post).",
    status_code=303,
    responses={
        303: {"description": "Back to the page, with a thank-you"},
        422: {
            "description": "A field is wrong, or the form was not issued by the page (a browser "
            "sees the page again, with the error)"
        },
        429: {
            "description": "The link has asked for as many call-backs today as one link may "
            "(a browser sees the page again, saying so)"
        },
    },
)
async def status_reply(token: str, request: Request) -> Response:
    """Publish the customer's answer to engagement.replies.v1, then show the page again."""
    claims: dict[str, Any] = {}
    try:
        claims = _verify(request, token)
        return await _reply(token, request, claims)
    except HeraldError as exc:
        if not _wants_html(request):
            raise
        return _problem_page(request, exc, _claim(claims, "locale"))


async def _reply(token: str, request: Request, claims: dict[str, Any]) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
    intent = (form.get("intent") or [""])[0]
    if intent not in BUTTONS:
        raise InvalidInput(f"intent must be one of {', '.join(BUTTONS)}", field="intent")
    repo: CaseRepository = request.app.state.repo
    state = await repo.get(claims["case"])
    if state is None or claims["customer"] not in state.customer_ids:
        raise NotFound("There is nothing to show for this link.")
    # After the case: a link that shows nothing says so (404) whatever its form held.
    submission = (form.get(SUBMISSION) or [""])[0]
    _check_submission(request, token, submission)
    # One answer per form as rendered: a double click publishes the same reply id again, which
    # every consumer already treats as a duplicate; a later answer (a corrected call-back
    # number, confirm after reschedule) comes from a page rendered since, with a new value.
    reply_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"herald:status:{token}:{submission}:{intent}"))
    number = None
    if intent == "callback":
        typed = (form.get("callback_number") or [""])[0].strip()
        try:
            number = _callback_number(typed, claims.get("locale"))
            await _count_callback(request, token, reply_id)
        except (InvalidInput, TooManyCallbacks) as exc:
            if not _wants_html(request):
                raise
            # The page again, saying what is wrong, with what they typed to correct.
            return await _render(
                request,
                token,
                claims,
                status=exc.status,
                error=(
                    "callback_limit"
                    if isinstance(exc, TooManyCallbacks)
                    else "bad_number_type"
                    if isinstance(exc, NotCallable)
                    else "bad_number"
                ),
                number=typed[:32],
                from_reply=True,
            )
    reply = EngagementReply(
        reply_id=reply_id,
        customer_id=claims["customer"],
        channel="web",
        intent=intent,  # checked against BUTTONS above
        # A link the dispatcher put in a message names the message and its campaign: the answer
        # is counted for that campaign (a link signed here, or before links named them, does not).
        message_id=_claim(claims, "msg"),
        campaign_id=_claim(claims, "cmp"),
        case_id=state.case_id,
        callback_number=number,
        locale=claims.get("locale"),
        at=utc_now(),
    )
    producer: EventProducer = request.app.state.runtime.producer
    # Bounded like every publish in a request: a broker that is away answers 503 (the same
    # form sent again publishes the same reply id), not a page that never loads.
    async with broker_wait(request.app.state.settings.publish_wait_seconds):
        await producer.publish(ENGAGEMENT_REPLY, reply, key=reply.customer_id, event_id=reply_id)
    # Relative to /s/<token>/reply, for the same reason as the form's action.
    return RedirectResponse(f"../{token}?done={intent}", status_code=303)


def _claim(claims: dict[str, Any], key: str) -> str | None:
    """An optional text claim of the link; None when absent or not text."""
    value = claims.get(key)
    return value if isinstance(value, str) and value else None


async def _count_callback(request: Request, token: str, reply_id: str) -> None:
    """Count a call-back asked for from this link today (UTC); TooManyCallbacks when the link
    has asked for `status_callbacks_per_day` already. The same answer again (a form sent
    twice) is not counted twice.

    Each call-back makes Herald place a call: whoever holds a link could otherwise have it
    call as often as they liked. The count is kept in the database, so it holds across the
    service's replicas and restarts; the link is stored as a digest, never itself."""
    settings: Settings = request.app.state.settings
    repo: CaseRepository = request.app.state.repo
    link = hashlib.sha256(token.encode()).hexdigest()[:32]
    now = utc_now()
    cap = settings.status_callbacks_per_day
    if not await repo.take_callback(link, now.date(), reply_id, cap=cap, now=now):
        raise TooManyCallbacks(
            f"this link has asked for {cap} call-backs today; no more are taken until tomorrow",
            field="intent",
        )


def _callback_number(raw: str, locale: str | None) -> str:
    """The number the customer typed for the call-back, as E.164 (national numbers read in the
    region of the link's locale, e.g. en-GB → GB); NotCallable for a valid number of a kind a
    call-back does not dial (CALLABLE)."""
    region = (locale or "").rpartition("-")[2].upper() or None
    try:
        parsed = phonenumbers.parse(raw, region if region and len(region) == 2 else None)
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is None or not phonenumbers.is_valid_number(parsed):
        raise InvalidInput("a phone number we can call", field="callback_number")
    if phonenumbers.number_type(parsed) not in CALLABLE:
        raise NotCallable(
            "a mobile or landline number: premium-rate, shared-cost, personal, pager and other "
            "special numbers are not called back",
            field="callback_number",
        )
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
