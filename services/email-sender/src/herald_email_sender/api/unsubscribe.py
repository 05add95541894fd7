"""RFC 8058 one-click unsubscribe: the mailbox provider POSTs `List-Unsubscribe=One-Click`."""

from __future__ import annotations

import html
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError

from herald_contracts import ENGAGEMENT_REPLY, EngagementReply, utc_now
from herald_email_sender.adapters.ledger import BatchedLedger
from herald_email_sender.config import Settings
from herald_email_sender.domain.message import ONE_CLICK
from herald_kit import (
    EventProducer,
    LinkInvalid,
    LinkSigner,
    MalformedRequest,
    NotFound,
    customer_page_headers,
)

log = logging.getLogger("herald.email.unsubscribe")
router = APIRouter(prefix="/v1/unsubscribe", tags=["unsubscribe"])

TokenPath = Annotated[str, Path(min_length=10, max_length=2000, description="Signed token.")]


def _signer(request: Request) -> LinkSigner:
    signer: LinkSigner | None = request.app.state.signer
    if signer is None:
        raise NotFound("Unsubscribe links are not configured here.")
    return signer


Signer = Annotated[LinkSigner, Depends(_signer)]


def _reply_for(payload: dict[str, Any]) -> EngagementReply:
    try:
        return EngagementReply(
            reply_id=f"unsubscribe:{payload['m']}",
            customer_id=payload["c"],
            channel="email",
            intent="unsubscribe",
            message_id=payload["m"],
            case_id=payload.get("k"),
            topic=payload.get("t"),  # none in links signed before topics were: every email
            at=utc_now(),
        )
    except (KeyError, TypeError, ValidationError) as exc:
        raise LinkInvalid("This link is not valid.", field="token") from exc


@router.post(
    "/{token}",
    summary="One-click unsubscribe (RFC 8058).",
    responses={
        400: {"description": "The body is not `List-Unsubscribe=One-Click` (problem+json)."},
        403: {"description": "The token is not genuine (problem+json)."},
        410: {"description": "The token has expired (problem+json)."},
    },
)
async def one_click(request: Request, token: TokenPath, signer: Signer) -> JSONResponse:
    """Publish an unsubscribe reply for the message the link was sent with."""
    settings: Settings = request.app.state.settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise MalformedRequest(
            "Send the form field List-Unsubscribe=One-Click.", field="List-Unsubscribe"
        )
    try:
        form = await request.form()
    except Exception as exc:  # python-multipart raises several types on bad bodies
        raise MalformedRequest("The form body cannot be parsed.", field="body") from exc
    if form.get("List-Unsubscribe") != "One-Click":
        raise MalformedRequest(f"The body must be {ONE_CLICK}.", field="List-Unsubscribe")
    payload = signer.verify(token, max_age_seconds=settings.unsubscribe_max_age_seconds)
    reply = _reply_for(payload)
    # Kept here too, by the message's address, before it is published: an email to the
    # address that it covers and that is still waiting (the pacer, a retry pause, an open
    # breaker) is not sent, though the dispatcher handed it over before preferences heard.
    ledger: BatchedLedger | None = request.app.state.ledger
    if (
        ledger is not None
        and reply.message_id is not None
        and not await ledger.unsubscribe(
            reply.message_id, customer_id=reply.customer_id, topic=reply.topic, at=reply.at
        )
    ):
        log.info("unsubscribe from an email no longer in the ledger: left to preferences")
    producer: EventProducer = request.app.state.runtime.producer
    # The reply id derives from the message: a second click is the same event, not a new one.
    await producer.publish(
        ENGAGEMENT_REPLY,
        reply,
        key=reply.customer_id,
        event_id=reply.reply_id,
        subject=reply.case_id,
    )
    return JSONResponse({"status": "unsubscribed"})


@router.get(
    "/{token}",
    summary="A confirmation page; a GET never unsubscribes (mail scanners follow links).",
    response_class=HTMLResponse,
)
async def confirm_page(request: Request, token: TokenPath, signer: Signer) -> HTMLResponse:
    """A page with one button that makes the one-click POST, sent with the headers of every
    customer page (never cached, no referrer, never framed)."""
    settings: Settings = request.app.state.settings
    signer.verify(token, max_age_seconds=settings.unsubscribe_max_age_seconds)
    # Relative to the page (/v1/unsubscribe/<token>), so the button posts back to this very
    # URL: behind an ingress that serves the service under a path prefix and strips it
    # (<public base>/email-sender/v1/unsubscribe/<token>), the path the service sees would
    # post outside the service, where nothing unsubscribes.
    action = html.escape(f"./{token}", quote=True)
    return HTMLResponse(
        "<!doctype html><html lang=en><meta charset=utf-8><title>Unsubscribe</title>"
        f'<form method=post action="{action}">'
        '<input type=hidden name="List-Unsubscribe" value="One-Click">'
        "<p>Stop these emails?</p><button type=submit>Unsubscribe</button></form></html>",
        headers=customer_page_headers(),
    )
