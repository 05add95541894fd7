"""A Twilio-compatible Messages resource, answering as Twilio does, with signed callbacks."""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import math
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse
from twilio.request_validator import RequestValidator

from herald_sandbox.config import Settings
from herald_sandbox.domain.store import Outbox, SmsRecord

router = APIRouter(prefix="/2010-04-01", tags=["twilio"])
log = logging.getLogger("herald.sandbox.twilio")

GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)


def segments(body: str) -> int:
    """Segments Twilio would bill: GSM-7 153/160, UCS-2 67/70."""
    if all(c in GSM7 for c in body):
        n, single, multi = len(body), 160, 153
    else:
        n, single, multi = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if n <= single else math.ceil(n / multi)


def twilio_error(status: int, code: int, message: str) -> JSONResponse:
    """An error body shaped like Twilio's."""
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status_code=status,
    )


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


async def fire_status_callbacks(record: SmsRecord, settings: Settings) -> None:
    """Post 'sent' then 'delivered' to the StatusCallback, signed as Twilio signs them."""
    if not record.status_callback:
        return
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    async with httpx.AsyncClient(timeout=5) as client:
        for status in ("sent", "delivered"):
            await asyncio.sleep(settings.callback_delay_seconds)
            record.status = status
            params = {
                "AccountSid": record.account_sid,
                "MessageSid": record.sid,
                "SmsSid": record.sid,
                "MessageStatus": status,
                "SmsStatus": status,
                "To": record.to,
                "From": record.from_,
                "ApiVersion": "2010-04-01",
            }
            signature = validator.compute_signature(record.status_callback, params)
            try:
                await client.post(
                    record.status_callback, data=params, headers={"X-Twilio-Signature": signature}
                )
            except httpx.HTTPError as exc:
                log.warning("status callback failed", extra={"error": type(exc).__name__})


@router.post("/Accounts/{account_sid}/Messages.json", status_code=201)
async def create_message(
    request: Request,
    account_sid: str,
    to: Annotated[str, Form(alias="To")],
    body: Annotated[str, Form(alias="Body")],
    from_: Annotated[str | None, Form(alias="From")] = None,
    messaging_service_sid: Annotated[str | None, Form(alias="MessagingServiceSid")] = None,
    status_callback: Annotated[str | None, Form(alias="StatusCallback")] = None,
) -> Any:
    """Accept a message as Twilio's Messages resource does."""
    settings: Settings = request.app.state.settings
    outbox: Outbox = request.app.state.outbox
    if not _authorised(request, account_sid, settings):
        return twilio_error(401, 20003, "Authenticate")
    if not to.startswith("+") or not to[1:].isdigit():
        return twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
    if not from_ and not messaging_service_sid:
        return twilio_error(400, 21603, "A 'From' phone number is required.")
    record = outbox.add_sms(
        account_sid=account_sid,
        to=to,
        from_=from_ or messaging_service_sid or "",
        body=body,
        status="queued",
        status_callback=status_callback,
        num_segments=segments(body),
    )
    task = asyncio.create_task(fire_status_callbacks(record, settings))
    request.app.state.tasks.add(task)
    task.add_done_callback(request.app.state.tasks.discard)
    return JSONResponse(record.as_twilio(), status_code=201)
