"""Twilio's webhooks: message status callbacks and inbound SMS, both signature-checked."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from herald_kit import HeraldError, MalformedRequest, NotFound
from herald_sms_sender.config import Settings
from herald_sms_sender.replies import Replies
from herald_sms_sender.sending import SmsSending

router = APIRouter(prefix="/webhooks/twilio", tags=["webhooks"])
TWIML = "application/xml"


class BadSignature(HeraldError):
    """The request is not signed by Twilio with our auth token."""

    status = 403
    title = "Forbidden"


async def signed_form(request: Request) -> FormData:
    """The form fields of a request Twilio signed; 403 when unsigned or tampered, 4xx if malformed.

    The signed URL is the public one Twilio called, rebuilt from configuration because behind a
    proxy the request's own host and scheme are the proxy's.
    """
    settings: Settings = request.app.state.settings
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("application/x-www-form-urlencoded"):
        raise MalformedRequest("expected an application/x-www-form-urlencoded body", field="body")
    try:
        form = await request.form()
    except Exception as exc:  # starlette raises several types for undecodable bodies
        raise MalformedRequest("the form body cannot be parsed", field="body") from exc
    url = settings.base_url() + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    signature = request.headers.get("x-twilio-signature", "")
    params = {k: str(v) for k, v in form.multi_items()}
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    if not signature or not validator.validate(url, params, signature):
        raise BadSignature("missing or invalid X-Twilio-Signature", field="X-Twilio-Signature")
    return form


def _required(form: FormData, name: str) -> str:
    value = form.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedRequest(f"{name} is required", field=name)
    return value


Signed = Annotated[FormData, Depends(signed_form)]


@router.post(
    "/status",
    summary="Message status callback (signed by Twilio).",
    responses={403: {"description": "Unsigned or tampered."}, 404: {"description": "Unknown."}},
)
async def status_callback(request: Request, form: Signed, mid: str = "") -> Response:
    """Record delivered / undelivered / failed once and publish it to delivery.status.v1."""
    sending: SmsSending = request.app.state.sending
    status = _required(form, "MessageStatus")
    sid = _required(form, "MessageSid")
    row = await sending.ledger.get(mid) if mid else await sending.ledger.by_provider_id(sid)
    if row is None:
        raise NotFound("no message with this id", field="mid" if mid else "MessageSid")
    if status in ("delivered", "undelivered", "failed"):
        error = form.get("ErrorCode")
        code = error if isinstance(error, str) and error else None
        if await sending.ledger.set_delivery(row["_id"], status, code):
            ref = {k: row.get(k) for k in ("request_id", "campaign_id", "customer_id", "case_id")}
            await sending.publish(
                {**ref, "message_id": row["_id"]},
                status,  # type: ignore[arg-type]
                provider_id=sid,
                error_code=code,
                reason=None if status == "delivered" else f"carrier reported {status}",
            )
    return Response(status_code=204)


@router.post(
    "/inbound",
    summary="Inbound SMS (signed by Twilio): keywords and reply codes.",
    responses={403: {"description": "Unsigned or tampered."}},
)
async def inbound_sms(request: Request, form: Signed) -> Response:
    """Interpret the reply, apply STOP/START locally, publish it; answer HELP with TwiML."""
    replies: Replies = request.app.state.replies
    answer = await replies.handle(
        sid=_required(form, "MessageSid"),
        from_=_required(form, "From"),
        body=str(form.get("Body") or ""),
    )
    twiml = MessagingResponse()
    if answer:
        twiml.message(answer)
    return Response(str(twiml), media_type=TWIML)
