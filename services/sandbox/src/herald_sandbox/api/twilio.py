"""A Twilio-compatible Messages and Calls resource, answering as Twilio does, with callbacks
signed exactly as Twilio signs them (HMAC-SHA1 of the URL and sorted form fields)."""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import math
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode, urljoin

import aiohttp
from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from twilio.request_validator import RequestValidator

from herald_kit import Runtime
from herald_sandbox.config import Settings
from herald_sandbox.domain.faults import Behaviour
from herald_sandbox.domain.store import CallRecord, Outbox, SmsRecord

router = APIRouter(prefix="/2010-04-01", tags=["twilio"])
log = logging.getLogger("herald.sandbox.twilio")

GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)
API_VERSION = "2010-04-01"
# Twilio refuses a longer message body outright (400, error 21617), however it would split it.
MAX_BODY_CHARS = 1600
# Twilio's list pages: 50 records unless PageSize says otherwise, at most 1000.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Connections to webhook hosts at once. Twilio's status callbacks are not capped at a few dozen:
# at 32, an SMS sender answering ~100 ms late under load (2 callbacks per SMS at 150 SMS/s)
# left callbacks queued past their timeout, and the benchmark lost a third of its statuses.
WEBHOOK_CONCURRENCY = 256
# As Twilio: 15 s for the answer once the request is sent; a callback waiting for one of the
# connections above is queued, not timed out.
WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=15)


def install(app: FastAPI, runtime: Runtime, settings: Settings) -> None:
    """Give the app the Twilio side's state: rate limits, fault rules, an HTTP client."""
    app.state.behaviour = Behaviour(
        rate_per_number=settings.twilio_rate_per_number,
        enforce_opt_out=settings.twilio_enforce_opt_out,
    )
    # Webhooks go out through aiohttp: httpx's connection pool matched every queued request
    # against every connection (an expiry check each), half of a busy sandbox's CPU.
    app.state.twilio_http = None

    @runtime.on_start
    async def _open() -> None:
        app.state.twilio_http = aiohttp.ClientSession(
            timeout=WEBHOOK_TIMEOUT,
            connector=aiohttp.TCPConnector(limit=WEBHOOK_CONCURRENCY),
        )

    @runtime.on_stop
    async def _close() -> None:
        # Callbacks still queued die with the provider, before the client they would use.
        pending = list(app.state.tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if app.state.twilio_http is not None:
            await app.state.twilio_http.close()


@dataclass(frozen=True)
class WebhookAnswer:
    """What the application answered a webhook."""

    status_code: int
    text: str


def segments(body: str) -> int:
    """Segments Twilio would bill: GSM-7 153/160, UCS-2 67/70."""
    if all(c in GSM7 for c in body):
        n, single, multi = len(body), 160, 153
    else:
        n, single, multi = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if n <= single else math.ceil(n / multi)


def twilio_error(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error body shaped like Twilio's."""
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status_code=status,
        headers=headers,
    )


# What a proxy in front of the API answers when the API's answer does not reach it (no
# Twilio error body, so no Twilio code).
BAD_GATEWAY = "<html><body><h1>502 Bad Gateway</h1></body></html>"


def _unavailable() -> JSONResponse:
    """Twilio's 503 (20503): the request was not taken; Twilio says try again with back-off."""
    return twilio_error(503, 20503, "Service unavailable")


def _authorised(request: Request, account_sid: str, settings: Settings) -> bool:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return False
    return (
        hmac.compare_digest(user, settings.twilio_account_sid)
        and hmac.compare_digest(password, settings.twilio_auth_token.get_secret_value())
        and account_sid == settings.twilio_account_sid
    )


def _valid_number(number: str) -> bool:
    digits = number[1:]
    return number[:1] == "+" and digits.isascii() and digits.isdigit() and 8 <= len(number) <= 16


FORM = "application/x-www-form-urlencoded"


async def signed_post(app: FastAPI, url: str, params: dict[str, str]) -> WebhookAnswer | None:
    """POST a webhook signed with X-Twilio-Signature as Twilio does; None if unreachable."""
    settings: Settings = app.state.settings
    try:
        signature = RequestValidator(
            settings.twilio_auth_token.get_secret_value()
        ).compute_signature(url, params)
        session: aiohttp.ClientSession = app.state.twilio_http
        # Encoded here: aiohttp builds a dict into a form at ~100 µs a webhook, urlencode ~40.
        headers = {"X-Twilio-Signature": signature, "Content-Type": FORM}
        async with session.post(url, data=urlencode(params), headers=headers) as response:
            return WebhookAnswer(response.status, await response.text())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # unreachable, or a bad URL
        log.warning("webhook call failed", extra={"error": type(exc).__name__})
        return None


def _spawn(request: Request, coro: Any) -> None:
    task = asyncio.create_task(coro)
    request.app.state.tasks.add(task)
    task.add_done_callback(request.app.state.tasks.discard)


async def fire_status_callbacks(app: FastAPI, record: SmsRecord, *, final: str) -> None:
    """Post 'sent' then the final status to the StatusCallback, signed as Twilio signs them."""
    settings: Settings = app.state.settings
    for status in ("sent", final):
        await asyncio.sleep(settings.callback_delay_seconds)
        record.status = status
        if not record.status_callback or not settings.twilio_callbacks:
            continue
        params = {
            "AccountSid": record.account_sid,
            "MessageSid": record.sid,
            "SmsSid": record.sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "To": record.to,
            "From": record.from_,
            "ApiVersion": API_VERSION,
        }
        if record.error_code is not None and status == final:
            params["ErrorCode"] = str(record.error_code)
        await signed_post(app, record.status_callback, params)


@router.post("/Accounts/{account_sid}/Messages.json", status_code=201)
async def create_message(
    request: Request,
    account_sid: str,
    # Optional here so that a missing field gets Twilio's 400 and code, not a 422.
    to: Annotated[str, Form(alias="To")] = "",
    body: Annotated[str, Form(alias="Body")] = "",
    from_: Annotated[str | None, Form(alias="From")] = None,
    messaging_service_sid: Annotated[str | None, Form(alias="MessagingServiceSid")] = None,
    status_callback: Annotated[str | None, Form(alias="StatusCallback")] = None,
) -> Any:
    """Accept a message as Twilio's Messages resource does (limits and faults included)."""
    settings: Settings = request.app.state.settings
    outbox: Outbox = request.app.state.outbox
    behaviour: Behaviour = request.app.state.behaviour
    if not _authorised(request, account_sid, settings):
        return twilio_error(401, 20003, "Authenticate")
    if not to:
        return twilio_error(400, 21604, "A 'To' phone number is required.")
    if not _valid_number(to):
        return twilio_error(400, 21211, "The 'To' number is not a valid phone number.")
    if not body:
        return twilio_error(400, 21602, "Message body is required.")
    if len(body) > MAX_BODY_CHARS:
        return twilio_error(
            400,
            21617,
            f"The concatenated message body exceeds the {MAX_BODY_CHARS} character limit.",
        )
    if not from_ and not messaging_service_sid:
        return twilio_error(400, 21603, "A 'From' phone number is required.")
    sender = messaging_service_sid or from_ or ""
    wait = behaviour.admit(sender)
    if wait:
        return twilio_error(
            429, 20429, "Too Many Requests", headers={"Retry-After": f"{max(1, math.ceil(wait))}"}
        )
    fault = behaviour.fault(
        to, ("server-error", "unavailable", "timeout", "bad-gateway", "undelivered")
    )
    if fault == "server-error":
        return twilio_error(500, 20500, "An internal server error has occurred")
    if fault == "unavailable":
        return _unavailable()
    if behaviour.enforce_opt_out and to in outbox.opted_out:
        return twilio_error(400, 21610, "Attempt to send to unsubscribed recipient", headers=None)
    record = outbox.add_sms(
        account_sid=account_sid,
        to=to,
        from_=sender,
        body=body,
        status="queued",
        status_callback=status_callback,
        num_segments=segments(body),
        accepted_at=time.monotonic(),
    )
    if fault == "undelivered":
        record.error_code = 30003
    _spawn(
        request,
        fire_status_callbacks(
            request.app, record, final="undelivered" if fault == "undelivered" else "delivered"
        ),
    )
    if fault == "timeout":
        # Twilio took the message, but the answer never reaches the client in time.
        await asyncio.sleep(behaviour.timeout_seconds)
    if fault == "bad-gateway":
        # Twilio took the message, but the proxy in between lost its answer.
        return HTMLResponse(BAD_GATEWAY, status_code=502)
    return JSONResponse(record.as_twilio(), status_code=201)


@dataclass(frozen=True)
class Paging:
    """Twilio's paging parameters: the page size, the page number, the cursor (PageToken:
    "PA" and the sid of the last record of the page before, "PB" and the first of the page
    after)."""

    page_size: int
    page: int
    page_token: str | None


def _paging(
    page_size: Annotated[int, Query(alias="PageSize", ge=1)] = DEFAULT_PAGE_SIZE,
    page: Annotated[int, Query(alias="Page", ge=0)] = 0,
    page_token: Annotated[str | None, Query(alias="PageToken")] = None,
) -> Paging:
    """The paging parameters of a list request."""
    return Paging(page_size, page, page_token)


def _page(
    name: str,
    records: Sequence[Any],
    render: Callable[[Any], dict[str, Any]],
    uri: str,
    filters: dict[str, str | None],
    paging: Paging,
) -> dict[str, Any]:
    """One page of a Twilio list answer, with the URIs of the first, previous and next pages
    (twilio-python follows next_page_uri to read the rest)."""
    size = min(paging.page_size, MAX_PAGE_SIZE)
    token = paging.page_token or ""
    sids = [r.sid for r in records]
    # Records are never removed, so a cursor's sid is found; if not, the page is empty.
    if token.startswith("PA"):
        start = sids.index(token[2:]) + 1 if token[2:] in sids else len(sids)
    elif token.startswith("PB"):
        start = max(0, sids.index(token[2:]) - size) if token[2:] in sids else len(sids)
    else:
        start = paging.page * size
    chunk = records[start : start + size]
    query = {k: v for k, v in filters.items() if v is not None}

    def page_uri(number: int, cursor: str | None = None) -> str:
        extra = {"PageToken": cursor} if cursor else {}
        return f"{uri}?{urlencode({**query, 'PageSize': size, 'Page': number, **extra})}"

    has_next = bool(chunk) and start + len(chunk) < len(records)
    has_previous = bool(chunk) and start > 0 and paging.page > 0
    return {
        name: [render(r) for r in chunk],
        "page": paging.page,
        "page_size": size,
        "first_page_uri": page_uri(0),
        "next_page_uri": page_uri(paging.page + 1, "PA" + chunk[-1].sid) if has_next else None,
        "previous_page_uri": (
            page_uri(paging.page - 1, "PB" + chunk[0].sid) if has_previous else None
        ),
        "uri": page_uri(paging.page, paging.page_token),
        "start": start,
        "end": start + max(0, len(chunk) - 1),
    }


@router.get("/Accounts/{account_sid}/Messages.json")
async def list_messages(
    request: Request,
    account_sid: str,
    page: Annotated[Paging, Depends(_paging)],
    to: Annotated[str | None, Query(alias="To")] = None,
    from_: Annotated[str | None, Query(alias="From")] = None,
) -> Any:
    """List messages, newest first, to and/or from one number, a page at a time as Twilio."""
    settings: Settings = request.app.state.settings
    if not _authorised(request, account_sid, settings):
        return twilio_error(401, 20003, "Authenticate")
    messages = [
        m
        for m in reversed(request.app.state.outbox.find_sms(to))
        if from_ is None or m.from_ == from_
    ]
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"
    filters = {"To": to, "From": from_}
    return _page("messages", messages, lambda m: m.as_twilio(), uri, filters, page)


@router.get("/Accounts/{account_sid}/Messages/{sid}.json")
async def fetch_message(request: Request, account_sid: str, sid: str) -> Any:
    """One message by its sid."""
    settings: Settings = request.app.state.settings
    if not _authorised(request, account_sid, settings):
        return twilio_error(401, 20003, "Authenticate")
    for m in request.app.state.outbox.sms:
        if m.sid == sid:
            return m.as_twilio()
    return twilio_error(404, 20404, f"The requested resource /Messages/{sid}.json was not found")


# --- Calls -------------------------------------------------------------------------------


@router.post("/Accounts/{account_sid}/Calls.json", status_code=201)
async def create_call(
    request: Request,
    account_sid: str,
    to: Annotated[str, Form(alias="To")] = "",
    from_: Annotated[str, Form(alias="From")] = "",
    url: Annotated[str, Form(alias="Url")] = "",
    status_callback: Annotated[str | None, Form(alias="StatusCallback")] = None,
    machine_detection: Annotated[str | None, Form(alias="MachineDetection")] = None,
) -> Any:
    """Place a call as Twilio's Calls resource does; the call then plays out in the background."""
    settings: Settings = request.app.state.settings
    behaviour: Behaviour = request.app.state.behaviour
    if not _authorised(request, account_sid, settings):
        return twilio_error(401, 20003, "Authenticate")
    if not to:
        return twilio_error(400, 21201, "No 'To' number is specified")
    if not _valid_number(to):
        return twilio_error(400, 21211, "The 'To' number is not a valid phone number.")
    if not from_:
        return twilio_error(400, 21213, "No 'From' number is specified")
    if not url.startswith(("http://", "https://")):
        return twilio_error(400, 21205, "Url is not a valid URL")
    wait = behaviour.admit(from_)
    if wait:
        return twilio_error(
            429, 20429, "Too Many Requests", headers={"Retry-After": f"{max(1, math.ceil(wait))}"}
        )
    fault = behaviour.fault(
        to,
        (
            "server-error",
            "unavailable",
            "timeout",
            "bad-gateway",
            "machine",
            "busy",
            "no-answer",
            "failed",
        ),
    )
    if fault == "server-error":
        return twilio_error(500, 20500, "An internal server error has occurred")
    if fault == "unavailable":
        return _unavailable()
    record = request.app.state.outbox.add_call(
        account_sid=account_sid,
        to=to,
        from_=from_,
        url=url,
        status="queued",
        status_callback=status_callback,
        machine_detection=machine_detection,
    )
    _spawn(
        request,
        play_call(request.app, record, None if fault in ("timeout", "bad-gateway") else fault),
    )
    if fault == "timeout":
        # Twilio placed the call, but the answer never reaches the client in time.
        await asyncio.sleep(behaviour.timeout_seconds)
    if fault == "bad-gateway":
        # Twilio placed the call, but the proxy in between lost its answer.
        return HTMLResponse(BAD_GATEWAY, status_code=502)
    return JSONResponse(record.as_twilio(), status_code=201)


@router.get("/Accounts/{account_sid}/Calls.json")
async def list_calls(
    request: Request,
    account_sid: str,
    page: Annotated[Paging, Depends(_paging)],
    to: Annotated[str | None, Query(alias="To")] = None,
    from_: Annotated[str | None, Query(alias="From")] = None,
    status: Annotated[str | None, Query(alias="Status")] = None,
) -> Any:
    """List calls, newest first, to and/or from one number and/or in one status, a page at a
    time as Twilio."""
    settings: Settings = request.app.state.settings
    if not _authorised(request, account_sid, settings):
        return twilio_error(401, 20003, "Authenticate")
    calls = [
        c
        for c in reversed(request.app.state.outbox.find_calls(to))
        if (from_ is None or c.from_ == from_) and (status is None or c.status == status)
    ]
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Calls.json"
    filters = {"To": to, "From": from_, "Status": status}
    return _page("calls", calls, lambda c: c.as_twilio(), uri, filters, page)


@router.get("/Accounts/{account_sid}/Calls/{sid}.json")
async def fetch_call(request: Request, account_sid: str, sid: str) -> Any:
    """One call by its sid."""
    settings: Settings = request.app.state.settings
    if not _authorised(request, account_sid, settings):
        return twilio_error(401, 20003, "Authenticate")
    call = request.app.state.outbox.calls.get(sid)
    if call is None:
        return twilio_error(404, 20404, f"The requested resource /Calls/{sid}.json was not found")
    return call.as_twilio()


def _call_params(call: CallRecord, status: str) -> dict[str, str]:
    params = {
        "AccountSid": call.account_sid,
        "CallSid": call.sid,
        "From": call.from_,
        "To": call.to,
        "CallStatus": status,
        "Direction": "outbound-api",
        "ApiVersion": API_VERSION,
    }
    if call.answered_by:
        params["AnsweredBy"] = call.answered_by
    return params


async def finish_call(app: FastAPI, call: CallRecord, status: str) -> None:
    """End a call and tell its StatusCallback."""
    call.status = status
    if call.status_callback and app.state.settings.twilio_callbacks:
        params = _call_params(call, status)
        params["CallDuration"] = "12" if status == "completed" else "0"
        await signed_post(app, call.status_callback, params)


async def play_call(app: FastAPI, call: CallRecord, fault: str | None) -> None:
    """Ring; then busy / no-answer / failed, or answer (by a person or a machine) and run TwiML."""
    await asyncio.sleep(app.state.settings.callback_delay_seconds)
    if fault in ("busy", "no-answer", "failed"):
        await finish_call(app, call, str(fault))
        return
    call.status = "in-progress"
    if call.machine_detection:
        call.answered_by = "machine_start" if fault == "machine" else "human"
    await run_twiml(app, call, call.url, {})


async def run_twiml(app: FastAPI, call: CallRecord, url: str, extra: dict[str, str]) -> str:
    """Fetch TwiML from the application, follow a <Redirect>, hang up when nothing is left."""
    for _ in range(5):  # a bound on redirects, as Twilio has one
        params = _call_params(call, "in-progress") | extra
        response = await signed_post(app, url, params)
        if response is None or response.status_code >= 400:
            await finish_call(app, call, "failed")
            return response.text if response is not None else ""
        twiml = response.text
        call.twiml.append(twiml)
        try:
            root = ET.fromstring(twiml)  # noqa: S314 - TwiML from the service under test
        except ET.ParseError:
            await finish_call(app, call, "failed")
            return twiml
        if root.find("Gather") is not None:
            return twiml  # waits for a keypress through the sandbox API
        redirect = root.find("Redirect")
        if redirect is not None and redirect.text:
            url, extra = urljoin(url, redirect.text.strip()), {}
            continue
        await finish_call(app, call, "completed")
        return twiml
    await finish_call(app, call, "completed")
    return ""


async def press(app: FastAPI, call: CallRecord, *, digits: str = "", speech: str = "") -> str:
    """The callee presses keys (or speaks) on the current <Gather>; the TwiML that follows."""
    if not call.twiml or call.status != "in-progress":
        return ""
    root = ET.fromstring(call.twiml[-1])  # noqa: S314 - TwiML from the service under test
    gather = root.find("Gather")
    if gather is None:
        return ""
    call.digits.append(digits or speech)
    action = urljoin(call.url, gather.get("action") or call.url)
    extra = {"Digits": digits} if digits else {"SpeechResult": speech, "Confidence": "0.9"}
    return await run_twiml(app, call, action, extra)
