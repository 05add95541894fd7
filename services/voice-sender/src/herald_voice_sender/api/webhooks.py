"""Twilio Voice webhooks: TwiML for the call, keypad/speech choices, call status; all signed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.datastructures import FormData

from herald_contracts import DeliveryState, Intent, utc_now
from herald_kit import MalformedRequest, NotFound, continued
from herald_twilio import validate_signed_form
from herald_voice_sender.adapters.ledger import number_key
from herald_voice_sender.calling import VoiceCalling
from herald_voice_sender.config import Settings
from herald_voice_sender.domain import ivr

router = APIRouter(prefix="/webhooks/twilio/voice", tags=["webhooks"])
TWIML = "application/xml"
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"description": "Unsigned or tampered."},
    404: {"description": "Unknown call."},
}


async def signed_form(request: Request) -> FormData:
    """The form fields of a request Twilio signed (see `validate_signed_form`)."""
    settings: Settings = request.app.state.settings
    return await validate_signed_form(
        request,
        public_base=settings.base_url(),
        auth_token=settings.twilio_auth_token.get_secret_value(),
    )


Signed = Annotated[FormData, Depends(signed_form)]


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def _row(request: Request, mid: str) -> dict[str, Any]:
    calling: VoiceCalling = request.app.state.calling
    row = await calling.ledger.get(mid) if mid else None
    if row is None:
        raise NotFound("no call with this id", field="mid")
    return row


def _ref(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("request_id", "campaign_id", "customer_id", "case_id")
    return {"message_id": row["_id"], **{k: row.get(k) for k in keys}}


@router.post("/twiml", summary="TwiML when the call connects (signed).", responses=FORBIDDEN)
async def twiml(request: Request, form: Signed, mid: str = "", again: str = "") -> Response:
    """The IVR menu for a person, the voicemail variant for a machine; reports the answer."""
    calling: VoiceCalling = request.app.state.calling
    settings: Settings = request.app.state.settings
    row = await _row(request, mid)
    language = row.get("language") or "en"
    if row.get("kind") == "callback":
        body = ivr.callback(language=language, contact_number=settings.contact_centre_number)
        return Response(body, media_type=TWIML)
    answered_by = _field(form, "AnsweredBy")
    machine = answered_by.startswith("machine") or answered_by == "fax"
    outcome: DeliveryState = "machine" if machine else "answered"
    if not again:  # a repeat publishes the same event (id message id:outcome) again
        with continued(row.get("traceparent")):  # the call's trace, kept on its ledger row
            await calling.publish_reported(_ref(row), outcome, provider_id=_field(form, "CallSid"))
    say = row.get("say") or ""
    if machine:
        body = ivr.voicemail(
            say=say, language=language, contact_number=settings.contact_centre_number
        )
    else:
        body = ivr.menu(
            say=say,
            language=language,
            gather_url=calling.url("gather", row["_id"]),
            again_url=None if again else calling.url("twiml", row["_id"], again="1"),
        )
    return Response(body, media_type=TWIML)


CHOICE_INTENT: dict[str, tuple[Intent, str | None]] = {
    "confirm": ("confirm", None),
    "agent": ("other", "agent"),
    "stop": ("stop", None),
}


@router.post("/gather", summary="The callee's key or words (signed).", responses=FORBIDDEN)
async def gather(request: Request, form: Signed, mid: str = "") -> Response:
    """Publish the choice to engagement.replies.v1 and answer it with TwiML."""
    calling: VoiceCalling = request.app.state.calling
    settings: Settings = request.app.state.settings
    row = await _row(request, mid)
    digits, speech = _field(form, "Digits"), _field(form, "SpeechResult")
    language = row.get("language") or "en"
    choice = ivr.interpret(digits=digits, speech=speech, language=language)
    if choice in CHOICE_INTENT:
        intent, text = CHOICE_INTENT[choice]
        call_sid = _field(form, "CallSid") or row.get("provider_id") or row["_id"]
        if intent == "stop" and row.get("to"):
            # Kept here too, before it is published: a call to the number still waiting (the
            # pacer, a retry pause, an open breaker) is not placed, though the dispatcher
            # handed it over before preferences heard of the stop.
            await calling.ledger.opt_out(
                number_key(row["to"]), at=utc_now(), customer_id=row["customer_id"]
            )
        # One reply per call and choice: Twilio's retries of this webhook publish the same id.
        with continued(row.get("traceparent")):
            await calling.publish_reply(
                _ref(row),
                reply_id=f"voice-{call_sid}-{choice}",
                intent=intent,
                text=text or digits,
            )
    body = ivr.after(
        choice,
        language=language,
        contact_number=settings.contact_centre_number,
        again_url=calling.url("twiml", row["_id"], again="1"),
    )
    return Response(body, media_type=TWIML)


FINAL: dict[str, DeliveryState] = {
    "busy": "busy",
    "no-answer": "no-answer",
    "failed": "failed",
    "canceled": "failed",
}


@router.post("/status", summary="Call status callback (signed).", responses=FORBIDDEN)
async def status(request: Request, form: Signed, mid: str = "") -> Response:
    """Report busy / no-answer / failed (answered and machine are reported by /twiml)."""
    calling: VoiceCalling = request.app.state.calling
    row = await _row(request, mid)
    call_status = _field(form, "CallStatus")
    if not call_status:
        raise MalformedRequest("CallStatus is required", field="CallStatus")
    outcome = FINAL.get(call_status)
    if outcome is not None:  # a repeated callback publishes the same event again, counted once
        with continued(row.get("traceparent")):
            await calling.publish_reported(
                _ref(row),
                outcome,
                provider_id=_field(form, "CallSid") or None,
                error_code=_field(form, "ErrorCode") or None,
                reason=f"call {call_status}",
            )
    return Response(status_code=204)
