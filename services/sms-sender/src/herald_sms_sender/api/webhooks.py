"""Twilio's webhooks: message status callbacks and inbound SMS, both signature-checked."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.datastructures import FormData
from twilio.twiml.messaging_response import MessagingResponse

from herald_kit import MalformedRequest, NotFound, continued
from herald_sms_sender.config import Settings
from herald_sms_sender.replies import Replies
from herald_sms_sender.sending import SmsSending
from herald_twilio import validate_signed_form

router = APIRouter(prefix="/webhooks/twilio", tags=["webhooks"])
TWIML = "application/xml"
# Statuses that end a message's delivery: published.
FINAL = frozenset({"delivered", "undelivered", "failed"})


async def signed_form(request: Request) -> FormData:
    """The form fields of a request Twilio signed (see `validate_signed_form`)."""
    settings: Settings = request.app.state.settings
    return await validate_signed_form(
        request,
        public_base=settings.base_url(),
        auth_token=settings.twilio_auth_token.get_secret_value(),
    )


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
    """Publish delivered / undelivered / failed to delivery.status.v1.

    A repeated callback (Twilio retries one that failed) publishes the same event again, under
    the same id (message id:status), which every consumer drops as a repeat, as it does a
    redelivered record. Nothing is recorded first: a crash between such a record and the
    publication would have made the retried callback look like a repeat and lost the status.
    The ledger records the status after its publication, and the outcome is counted then, the
    first time only (`herald_send_outcomes_total` counts statuses, not callbacks).
    """
    sending: SmsSending = request.app.state.sending
    status = _required(form, "MessageStatus")
    sid = _required(form, "MessageSid")
    if status not in FINAL:
        # queued / sending / sent: this service published "sent" when the provider accepted
        # the message; an intermediate status changes nothing, so it is not even looked up.
        return Response(status_code=204)
    row = await sending.ledger.get(mid) if mid else await sending.ledger.by_provider_id(sid)
    if row is None:
        raise NotFound("no message with this id", field="mid" if mid else "MessageSid")
    error = form.get("ErrorCode")
    code = error if isinstance(error, str) and error else None
    ref = {k: row.get(k) for k in ("request_id", "campaign_id", "customer_id", "case_id")}
    # In the trace the message was sent in, kept on its ledger row.
    with continued(row.get("traceparent")):
        await sending.publish_reported(
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
