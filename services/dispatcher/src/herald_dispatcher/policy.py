"""The policy pipeline: each contact request ends in one recorded decision, with its rule."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from herald_contracts import (
    OUTBOUND_SMS,
    CaseState,
    ContactPreferences,
    ContactRequest,
    OutboundSms,
    utc_now,
)
from herald_dispatcher.adapters.store import Decisions, Views
from herald_dispatcher.domain.channels import choose_channel
from herald_dispatcher.domain.render import RenderError, measure_sms, pick_template, render
from herald_kit import EventProducer, PermanentError

log = logging.getLogger("herald.dispatcher")
MESSAGE_NAMESPACE = uuid.UUID("2b0f3c55-0d7e-4c2b-8a39-5b1f6e2d7c90")


def message_id(request_id: str, channel: str, attempt: int) -> str:
    """Deterministic message id from (request id, channel, attempt)."""
    return str(uuid.uuid5(MESSAGE_NAMESPACE, f"{request_id}|{channel}|{attempt}"))


class UnknownCustomer(PermanentError):
    """No preferences are known for the request's customer."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One outcome and the rule that produced it."""

    outcome: str
    rule: str
    channel: str | None = None
    message_id: str | None = None
    detail: str | None = None


class Dispatcher:
    """Decide, render, emit, record."""

    def __init__(
        self, views: Views, decisions: Decisions, producer: EventProducer, *, view_wait: float
    ) -> None:
        self.views = views
        self.decisions = decisions
        self.producer = producer
        self.view_wait = view_wait

    async def _preferences(self, customer_id: str) -> ContactPreferences:
        deadline = asyncio.get_running_loop().time() + self.view_wait
        while True:
            prefs = await self.views.contact(customer_id)
            if prefs is not None:
                return prefs
            if asyncio.get_running_loop().time() >= deadline:
                raise UnknownCustomer(
                    f"no preferences for customer {customer_id!r}", field="customer_id"
                )
            await asyncio.sleep(0.1)

    async def _latest_case(self, request: ContactRequest) -> CaseState | None:
        held = await self.views.case(request.case_id) if request.case_id else None
        carried = request.case_state
        if held is None:
            return carried
        if carried is None or held.version >= carried.version:
            return held
        return carried

    async def handle(self, request: ContactRequest) -> Decision | None:
        """Decide one request; None when it was decided before (a redelivery)."""
        now = utc_now()
        claim_key = f"{request.request_id}:{request.attempt}"
        previous = await self.decisions.claim(claim_key, now=now)
        if previous is not None and previous.get("status") != "deciding":
            return None
        prefs = await self._preferences(request.customer_id)
        case = await self._latest_case(request)
        decision = await self._decide(request, prefs, case)
        await self.decisions.record(
            {
                "_id": f"{claim_key}:{decision.outcome}",
                "request_id": request.request_id,
                "attempt": request.attempt,
                "customer_id": request.customer_id,
                "case_id": request.case_id,
                "campaign_id": request.campaign.id,
                "campaign_version": request.campaign.version,
                "outcome": decision.outcome,
                "rule": decision.rule,
                "channel": decision.channel,
                "message_id": decision.message_id,
                "detail": decision.detail,
                "inputs": {
                    "case_version": case.version if case else None,
                    "preferences_version": prefs.version,
                },
                "at": now,
            }
        )
        await self.decisions.settle(claim_key, decision.outcome)
        return decision

    async def _decide(
        self, request: ContactRequest, prefs: ContactPreferences, case: CaseState | None
    ) -> Decision:
        if request.expires_at is not None and request.expires_at <= utc_now():
            return Decision("suppressed", "expired")
        choice = choose_channel(prefs, request.campaign)
        if choice.channel is None:
            return Decision("suppressed", "channel", detail=choice.reason)
        channel = choice.channel
        locale_key, template = pick_template(request.campaign.messages[channel], prefs.locale)
        variables: dict[str, Any] = {
            "case": case.model_dump(mode="json") if case else {},
            "contact": {"customer_id": prefs.customer_id, "locale": prefs.locale},
            "campaign": {"id": request.campaign.id, "name": request.campaign.name},
        }
        try:
            body = render(template.body, variables)
        except RenderError as exc:
            return Decision("failed", "render", channel=channel, detail=str(exc))
        mid = message_id(request.request_id, channel, request.attempt)
        if channel == "sms":
            measure = measure_sms(body)
            out = OutboundSms(
                message_id=mid,
                request_id=request.request_id,
                campaign_id=request.campaign.id,
                customer_id=request.customer_id,
                case_id=request.case_id,
                attempt=request.attempt,
                locale=locale_key,
                expires_at=request.expires_at,
                created_at=utc_now(),
                to=prefs.channels["sms"].address,
                body=body,
                segments=measure.segments,
                encoding="GSM-7" if measure.encoding == "GSM-7" else "UCS-2",
            )
            await self.producer.publish(
                OUTBOUND_SMS, out, key=request.customer_id, event_id=mid, subject=request.case_id
            )
            return Decision("sent", "ranked", channel=channel, message_id=mid)
        # Email and voice rendering arrive with their senders.
        return Decision("suppressed", "channel-not-available", channel=channel)
