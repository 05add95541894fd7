"""The sandbox's own JSON API for the Twilio side: behaviour, calls, simulated customers."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field

from herald_kit import InvalidInput, NotFound
from herald_sandbox.api.twilio import API_VERSION, press, signed_post
from herald_sandbox.domain.faults import Behaviour, FaultKind, FaultRule

router = APIRouter(prefix="/sandbox/api", tags=["sandbox"])

# Twilio's default opt-out and opt-in keywords (Advanced Opt-Out off).
STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
START_WORDS = {"START", "YES", "UNSTOP"}


class FaultIn(BaseModel):
    """One fault rule."""

    kind: FaultKind
    share: float = Field(ge=0, le=1)
    to_prefix: str = ""


class BehaviourIn(BaseModel):
    """What to change; omitted fields keep their value."""

    rate_per_number: float | None = Field(default=None, ge=0)
    burst: float | None = Field(default=None, ge=1)
    faults: list[FaultIn] | None = None
    timeout_seconds: float | None = Field(default=None, ge=0, le=60)
    enforce_opt_out: bool | None = Field(
        default=None, description="Refuse (21610) numbers that texted STOP, as Twilio does."
    )
    seed: int | None = None


class InboundSmsIn(BaseModel):
    """A customer texting one of our numbers."""

    from_: str = Field(alias="from")
    to: str
    body: str = Field(max_length=1600)
    url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/$.?#][^\s]*$",
        max_length=2000,
        description="Webhook; default the configured one.",
    )


class KeypadIn(BaseModel):
    """The callee pressing keys or speaking on a call's current <Gather>."""

    digits: str = Field(default="", pattern=r"^[0-9*#]{0,20}$")
    speech: str = Field(default="", max_length=500)


def _behaviour_json(b: Behaviour) -> dict[str, Any]:
    return {
        "rate_per_number": b.rate_per_number,
        "burst": b.burst,
        "faults": [{"kind": r.kind, "share": r.share, "to_prefix": r.to_prefix} for r in b.rules],
        "timeout_seconds": b.timeout_seconds,
        "enforce_opt_out": b.enforce_opt_out,
        "rejected_429": b.rejected_429,
        "injected": dict(b.injected),
    }


@router.get("/twilio/behaviour", summary="The Twilio side's rate limit, faults and counts.")
async def get_behaviour(request: Request) -> dict[str, Any]:
    """Current behaviour, how many requests it refused with 429, and how many it injected each
    fault into (`injected`, by kind) since the behaviour was last set."""
    return _behaviour_json(request.app.state.behaviour)


@router.post("/twilio/behaviour", summary="Change the per-number rate and the fault rules.")
async def set_behaviour(request: Request, body: BehaviourIn) -> dict[str, Any]:
    """Apply a new rate limit and/or fault rules (counters restart)."""
    b: Behaviour = request.app.state.behaviour
    b.configure(
        rate_per_number=body.rate_per_number,
        burst=body.burst,
        rules=(
            [FaultRule(f.kind, f.share, f.to_prefix) for f in body.faults]
            if body.faults is not None
            else None
        ),
        timeout_seconds=body.timeout_seconds,
        enforce_opt_out=body.enforce_opt_out,
        seed=body.seed,
    )
    return _behaviour_json(b)


@router.get("/calls", summary="Calls the sandbox placed, optionally to one number.")
async def list_calls(request: Request, to: str | None = None) -> dict[str, Any]:
    """Captured calls, oldest first, with the TwiML each fetched and the keys pressed."""
    items = [c.as_json() for c in request.app.state.outbox.find_calls(to)]
    return {"items": items, "count": len(items)}


@router.post("/twilio/inbound-sms", summary="Simulate a customer's SMS to one of our numbers.")
async def inbound_sms(request: Request, body: InboundSmsIn) -> dict[str, Any]:
    """Deliver a signed inbound-SMS webhook, applying Twilio's own STOP/START handling."""
    settings = request.app.state.settings
    url = body.url or settings.twilio_sms_webhook_url
    if not url:
        raise InvalidInput("no webhook URL given or configured", field="url")
    word = body.body.strip().upper()
    if word in STOP_WORDS:
        request.app.state.outbox.opted_out.add(body.from_)
    elif word in START_WORDS:
        request.app.state.outbox.opted_out.discard(body.from_)
    params = {
        "AccountSid": settings.twilio_account_sid,
        "MessageSid": "SM" + secrets.token_hex(16),
        "SmsSid": "",
        "From": body.from_,
        "To": body.to,
        "Body": body.body,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsStatus": "received",
        "ApiVersion": API_VERSION,
    }
    params["SmsSid"] = params["MessageSid"]
    response = await signed_post(request.app, url, params)
    if response is None:
        return {"status": None, "response": None}
    return {"status": response.status_code, "response": response.text}


@router.post("/calls/{sid}/keypad", summary="Simulate the callee pressing keys or speaking.")
async def keypad(request: Request, sid: str, body: Annotated[KeypadIn, Body()]) -> dict[str, Any]:
    """Send the keys to the call's current <Gather> action; the TwiML that answered."""
    call = request.app.state.outbox.calls.get(sid)
    if call is None:
        raise NotFound(f"no call {sid}", field="sid")
    if not body.digits and not body.speech:
        raise InvalidInput("give digits or speech", field="digits")
    twiml = await press(request.app, call, digits=body.digits, speech=body.speech)
    return {"twiml": twiml, "status": call.status}
