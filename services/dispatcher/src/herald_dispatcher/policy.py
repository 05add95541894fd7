"""The policy pipeline: each contact request ends in one recorded decision, with its rule.

Rules run in the order of the issue: expiry, still-applies, superseded, duplicate (the claim),
channel choice, quiet hours, frequency caps, rendering, repeated content, emission. Escalation
re-enters the same pipeline with the next attempt and the channels already tried.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from herald_contracts import (
    DELIVERY_STATUS,
    OUTBOUND_EMAIL,
    OUTBOUND_SMS,
    OUTBOUND_VOICE,
    SCHEDULED_FIRE,
    TIMER_REQUESTED,
    CaseState,
    Channel,
    ContactPreferences,
    ContactRequest,
    DeliveryStatus,
    EngagementReply,
    EventType,
    OutboundEmail,
    OutboundSms,
    OutboundVoice,
    TimerRequest,
    utc_now,
)
from herald_dispatcher.adapters.store import (
    CapHistory,
    Decisions,
    LastContent,
    Ledger,
    RequestState,
    Views,
    content_key,
    stored_request,
)
from herald_dispatcher.config import Settings
from herald_dispatcher.domain.render import (
    MAX_SMS_CHARS,
    RenderError,
    measure_sms,
    pick_template,
    render,
    written_for,
)
from herald_dispatcher.metrics import DECISIONS, FIRST_CONTACT, RENDER_ERRORS
from herald_kit import EventProducer, LinkSigner, PermanentError, labelled
from herald_kit.caps import CapLimits, apply_caps
from herald_kit.cel import ExpressionError, evaluate
from herald_kit.channels import choose_channel
from herald_kit.windows import ContactWindow, contact_window

log = logging.getLogger("herald.dispatcher")
MESSAGE_NAMESPACE = uuid.UUID("2b0f3c55-0d7e-4c2b-8a39-5b1f6e2d7c90")
# Statuses that mean the message did not reach the customer: escalate at once.
FAILED: frozenset[str] = frozenset({"failed", "undelivered", "no-answer", "busy"})
# Rules that fail a channel before anything is sent: the next ranked channel is tried at once.
BEFORE_SENDING: frozenset[str] = frozenset({"segment-limit", "render"})
# Statuses that mean it did: success for campaigns whose success is "delivered".
DELIVERED: frozenset[str] = frozenset({"delivered", "answered"})
OUTBOUND_TOPICS: dict[str, EventType] = {
    "sms": OUTBOUND_SMS,
    "email": OUTBOUND_EMAIL,
    "voice": OUTBOUND_VOICE,
}


def message_id(request_id: str, channel: str, attempt: int) -> str:
    """Deterministic message id from (request id, channel, attempt)."""
    return str(uuid.uuid5(MESSAGE_NAMESPACE, f"{request_id}|{channel}|{attempt}"))


def content_digest(
    message: OutboundSms | OutboundEmail | OutboundVoice, links: dict[str, str] | None = None
) -> str:
    """A digest of what the customer reads or hears: the SMS body; the email's subject, text and
    HTML; the call's words and their language. A signed link reads the same to the customer
    whenever it was signed, so each link the message carries counts as its name."""
    if isinstance(message, OutboundSms):
        parts: list[str | None] = [message.body]
    elif isinstance(message, OutboundEmail):
        parts = [message.subject, message.text, message.html]
    else:
        parts = [message.say, message.language]
    for name, url in (links or {}).items():
        for form in (url, html.escape(url, quote=False)):
            parts = [p.replace(form, f"{{links.{name}}}") if p else p for p in parts]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def derived_id(*parts: object) -> str:
    """A deterministic id for timers and re-published requests."""
    return str(uuid.uuid5(MESSAGE_NAMESPACE, "|".join(str(p) for p in parts)))


class UnknownCustomer(PermanentError):
    """No preferences are known for the request's customer."""


class UnknownCampaign(PermanentError):
    """The request's campaign has nothing the dispatcher could send."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One outcome and the rule that produced it."""

    outcome: str
    rule: str
    channel: str | None = None
    message_id: str | None = None
    detail: str | None = None
    due_at: datetime | None = None
    reason: str | None = None  # a suppression's machine-readable reason (SUPPRESSION_REASONS)


class Dispatcher:
    """Decide, render, emit, record; escalate on failure or silence."""

    def __init__(
        self,
        views: Views,
        decisions: Decisions,
        ledger: Ledger,
        producer: EventProducer,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.views = views
        self.decisions = decisions
        self.ledger = ledger
        self.producer = producer
        self.settings = settings
        self.clock = clock
        secret = settings.link_secret.get_secret_value()
        self._status_links = LinkSigner(secret, "case-status") if secret else None
        self._pref_links = LinkSigner(secret, "preferences") if secret else None

    # -- inputs -------------------------------------------------------------------------------

    async def _preferences(self, customer_id: str) -> ContactPreferences:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.view_wait_seconds
        while True:
            prefs = await self.views.contact(customer_id)
            if prefs is not None:
                return prefs
            if loop.time() >= deadline:
                raise UnknownCustomer(
                    f"no preferences for customer {customer_id!r}", field="customer_id"
                )
            await asyncio.sleep(0.1)

    async def _latest_case(self, request: ContactRequest) -> CaseState | None:
        """The newest case state known: the view's, waiting a bounded time for a named version."""
        carried = request.case_state
        if request.case_id is None:
            return carried
        wanted = request.case_version or (carried.version if carried else 0)
        loop = asyncio.get_running_loop()
        # A request carrying the version it names has nothing to wait for: the view is read once
        # for anything newer (the scheduler's requests do; the view usually lags them by a hop).
        has_wanted = carried is not None and carried.version >= wanted
        deadline = loop.time() + (0 if has_wanted else self.settings.case_wait_seconds)
        while True:
            held = await self.views.case(request.case_id)
            if held is not None and held.version >= wanted:
                break
            if loop.time() >= deadline:
                break  # decide on what is known; the decision records the versions seen
            await asyncio.sleep(0.05)
        if held is None:
            return carried
        if carried is None or held.version >= carried.version:
            return held
        return carried

    # -- the pipeline -------------------------------------------------------------------------

    async def handle(self, request: ContactRequest) -> Decision:
        """Decide one request and record the decision (a redelivery is recorded as ignored)."""
        if not request.campaign.messages:
            raise UnknownCampaign(
                f"campaign {request.campaign.id!r} has no messages", field="campaign.messages"
            )
        now = self.clock()
        not_before = request.not_before.isoformat() if request.not_before else "-"
        claim_key = f"{request.request_id}:{request.attempt}:{not_before}"
        # Every read the decision may need depends on the request alone: they go out with the
        # claim, in one round trip instead of four (a customer's requests are decided one at a
        # time, so nothing read here can change before it is used).
        reads = _Reads.start(self, request)
        try:
            previous, got_prefs, got_case = await asyncio.gather(
                self.decisions.claim(claim_key, now=now),
                self._preferences(request.customer_id),
                self._latest_case(request),
                return_exceptions=True,
            )
            if isinstance(previous, BaseException):
                raise previous
            if previous is not None:  # ignored whatever its inputs
                decision = Decision(
                    "ignored", "duplicate", detail=f"decided before: {previous['outcome']}"
                )
                await self._record(claim_key, request, decision, None, None, now)
                return decision
            for got in (got_prefs, got_case):
                if isinstance(got, BaseException):
                    raise got
            prefs = cast(ContactPreferences, got_prefs)
            case = cast(CaseState | None, got_case)
            # A deferral's timer that reaches us a little before its due time (the scheduler's
            # clock ahead of ours) is on time: decided as of its due time, the rules that
            # deferred it cannot defer it again to the same moment, whose claim is this one.
            at = max(now, request.not_before) if request.not_before else now
            try:
                decision = await self._decide(request, prefs, case, at, reads)
            except RenderError as exc:  # defensive: rendering errors are decisions, not crashes
                decision = Decision("failed", "render", detail=str(exc))
        finally:
            reads.discard()
        if decision.outcome in ("suppressed", "failed"):
            # Before the decision is recorded: a crash in between decides (and publishes) again.
            await self._publish_unsent(request, decision, now)
        await self._record(claim_key, request, decision, prefs, case, now)
        return decision

    async def _publish_unsent(
        self, request: ContactRequest, decision: Decision, now: datetime
    ) -> None:
        """Tell delivery.status.v1 that a contact was not made and why (campaign stats count it):
        `suppressed` with its reason, or `failed` (no message could be made on any channel
        tried) with the rule that failed it as its reason and the last channel tried.

        Only a contact's own decision: an escalation that stops (customer reached, channels or
        attempts used up) follows a contact that was made, and an escalation that fails follows
        one whose own statuses were counted. A contact's own decision may be a later attempt (a
        channel failed before sending, the next one was deferred): it is still the contact's,
        and the only one that ends it, since a deferral publishes nothing. The id derives from
        the request alone, so a replay or a second decision of the same request publishes the
        same event, which stats count once.
        """
        if not request.first_contact:
            return
        failed = decision.outcome == "failed"
        sid = derived_id(request.request_id, "failed" if failed else "suppressed")
        status = DeliveryStatus(
            message_id=sid,
            request_id=request.request_id,
            campaign_id=request.campaign.id,
            customer_id=request.customer_id,
            case_id=request.case_id,
            channel=decision.channel,
            status="failed" if failed else "suppressed",
            reason=decision.rule if failed else decision.reason or decision.rule,
            at=now,
        )
        await self.producer.publish(
            DELIVERY_STATUS, status, key=request.customer_id, event_id=sid, subject=request.case_id
        )

    async def _record(
        self,
        claim_key: str,
        request: ContactRequest,
        decision: Decision,
        prefs: ContactPreferences | None,
        case: CaseState | None,
        now: datetime,
    ) -> None:
        labelled(DECISIONS, decision.outcome, decision.rule).inc()
        if decision.outcome == "failed":
            log.warning(
                "contact failed",
                extra={
                    "rule": decision.rule,
                    "request_id": request.request_id,
                    "campaign": request.campaign.id,
                    "detail": decision.detail,
                },
            )
        await self.decisions.record(
            {
                # The decision of a claim has the claim's key; a duplicate's is beside it.
                "_id": claim_key if decision.rule != "duplicate" else f"{claim_key}:duplicate",
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
                "due_at": decision.due_at,
                "inputs": {
                    "case_version": case.version if case else None,
                    "case_version_requested": request.case_version,
                    "preferences_version": prefs.version if prefs else None,
                    "tried_channels": list(request.tried_channels),
                    "escalation_of": request.escalation_of,
                },
                "at": now,
            }
        )

    async def _decide(
        self,
        request: ContactRequest,
        prefs: ContactPreferences,
        case: CaseState | None,
        now: datetime,
        reads: _Reads,
    ) -> Decision:
        campaign = request.campaign
        first = request.first_contact
        case_json = (
            case.model_dump(mode="json") if case else {}
        )  # what conditions and templates see
        # 1. expiry
        if request.expires_at is not None and request.expires_at <= now:
            return Decision("suppressed", "expired", reason="expired")
        if request.attempt > campaign.max_attempts:
            return Decision("suppressed", "attempts-exhausted")
        if request.escalation_of is not None:
            flags = await self.ledger.outcome(request.request_id)
            if flags.get("engaged") or (campaign.success == "delivered" and flags.get("delivered")):
                return Decision("suppressed", "escalation-success", detail="customer reached")
        # 2. still applies, against the latest case state
        if campaign.still_applies:
            variables = {"case": case_json}
            try:
                applies = evaluate(campaign.still_applies, variables)
            except ExpressionError as exc:
                return Decision("failed", "still-applies", detail=str(exc))
            if not applies:
                version = case.version if case else None
                return Decision(
                    "suppressed",
                    "still-applies",
                    detail=f"case moved on (version {version})",
                    reason="still-applies",
                )
        # 3. superseded by a newer request for the same campaign and case
        if request.case_id is None:
            return await self._reach(request, prefs, case, case_json, now, None, reads)
        order = _trigger_order(request)
        state = await reads.state()
        if state.order > order:
            return Decision(
                "suppressed",
                "superseded",
                detail=f"a request for case version {state.order} exists",
                reason="superseded",
            )
        # A request that told this version itself is being decided again (a crash after its
        # emission, before its decision was recorded): it goes on, and emits the same message
        # id, which the sender's ledger sends once.
        if (
            first
            and case is not None
            and state.told >= case.version
            and (state.told_by != request.request_id)
        ):
            decision = Decision(
                "suppressed",
                "superseded",
                detail=f"customer already told version {state.told}",
                reason="superseded",
            )
        else:
            decision = await self._reach(request, prefs, case, case_json, now, state, reads)
        if decision.outcome != "sent":  # a sent decision wrote the state with what was told
            await self.ledger.save_request_state(state)
        return decision

    async def _reach(
        self,
        request: ContactRequest,
        prefs: ContactPreferences,
        case: CaseState | None,
        case_json: dict[str, Any],
        now: datetime,
        state: RequestState | None,
        reads: _Reads,
    ) -> Decision:
        """Rules 4 to 9 on the best channel; the next one when it fails before sending.

        A message that cannot be made for a channel (it does not render, or is over the SMS
        segment limit or the provider's 1,600 characters) is tried on the next ranked channel
        at once, as a message that failed at the provider would be: the next attempt, with that
        channel among those tried. It ends `failed` only when the attempts are used up or no
        channel is left. A contact sent at once on the later channel still counts as the
        customer's first (caps).
        """
        first = request.first_contact
        failures: list[str] = []
        failed: Decision | None = None
        while True:
            decision = await self._reach_channel(
                request, prefs, case, case_json, now, state, reads, first=first
            )
            if (
                failed is not None
                and decision.outcome == "suppressed"
                and decision.rule == "channel"
            ):
                return failed  # no channel is left: the contact failed
            if failures:
                # The decision says which channels gave way to the one it is about.
                before = "; ".join(failures)
                detail = f"{decision.detail}; {before}" if decision.detail else before
                decision = replace(decision, detail=detail)
            if decision.outcome != "failed" or decision.rule not in BEFORE_SENDING:
                return decision
            failed = decision
            channel = cast(Channel, decision.channel)
            if request.attempt >= request.campaign.max_attempts:
                return failed
            log.warning(
                "channel failed before sending, trying the next",
                extra={
                    "rule": decision.rule,
                    "channel": channel,
                    "request_id": request.request_id,
                    "campaign": request.campaign.id,
                },
            )
            failures.append(f"{channel} failed: {decision.rule}")
            request = request.model_copy(
                update={
                    "attempt": request.attempt + 1,
                    "tried_channels": [*request.tried_channels, channel],
                }
            )

    async def _reach_channel(
        self,
        request: ContactRequest,
        prefs: ContactPreferences,
        case: CaseState | None,
        case_json: dict[str, Any],
        now: datetime,
        state: RequestState | None,
        reads: _Reads,
        *,
        first: bool,
    ) -> Decision:
        """Rules 4 to 9: the channel, its windows, the caps, then render and emit."""
        campaign = request.campaign
        # 4. duplicates were refused by the claim in handle()
        # 5. channel
        choice = choose_channel(prefs, campaign, exclude=frozenset(request.tried_channels))
        if choice.channel is None:
            return Decision("suppressed", "channel", detail=choice.reason, reason=choice.code)
        channel = choice.channel
        # Rule 8b's read, while the windows and the caps are weighed.
        reads.start_content(content_key(request.customer_id, channel, request.case_id))
        # 6. quiet hours and the legal window
        window = self.contact_window(prefs, channel, critical=campaign.critical)
        try:
            allowed_at = window.next_allowed(now)
        except ValueError:
            return Decision(
                "suppressed",
                "quiet-hours",
                channel=channel,
                detail="windows never open",
                reason="quiet-hours",
            )
        if allowed_at > now:
            return await self._defer(request, channel, allowed_at, "quiet-hours")
        history: CapHistory | None = None
        # 7. frequency caps (a contact counts once; escalations of it are not new contacts; a
        # campaign that does not count towards caps is not held back by them either)
        if first and campaign.counts_towards_cap:
            limits = self.settings.caps.get(campaign.priority.value, CapLimits())
            history = await reads.history()
            sent = history.sent_times(exclude=request.request_id)
            capped = apply_caps(sent, now, limits, policy=campaign.cap_policy)
            if capped.action == "suppress":
                return Decision(
                    "suppressed",
                    "frequency-cap",
                    channel=channel,
                    detail=capped.cap,
                    reason="frequency-cap",
                )
            if capped.action == "defer" and capped.due is not None:
                try:
                    due = window.next_allowed(capped.due)
                except ValueError:
                    due = capped.due
                return await self._defer(request, channel, due, "frequency-cap", capped.cap)
        # 8. render, 9. emit
        return await self._emit(
            request, prefs, case, case_json, channel, window, now, state, history, reads, first
        )

    def contact_window(
        self, prefs: ContactPreferences, channel: Channel, *, critical: bool
    ) -> ContactWindow:
        """The customer's quiet hours and the legal window for the channel and region."""
        return contact_window(
            prefs,
            channel,
            critical=critical,
            legal_windows=self.settings.legal_windows,
            critical_windows=self.settings.critical_windows,
        )

    async def _defer(
        self,
        request: ContactRequest,
        channel: str,
        due: datetime,
        rule: str,
        detail: str | None = None,
    ) -> Decision:
        """Ask the scheduler to re-send the request at the next allowed moment.

        The moment is always later than the request's own not-before: the claim key holds it,
        and a request deferred to the moment it was already due at would find its claim taken
        and be dropped as a duplicate.
        """
        if request.not_before is not None and due <= request.not_before:
            due = request.not_before + timedelta(minutes=1)
        not_before = request.not_before.isoformat() if request.not_before else "-"
        timer = TimerRequest(
            timer_id=derived_id(request.request_id, request.attempt, not_before, "defer"),
            key=f"defer:{request.request_id}:{request.attempt}",
            due_at=due,
            reason=rule,
            request=request.model_copy(update={"not_before": due}),
        )
        await self.producer.publish(
            TIMER_REQUESTED, timer, key=request.customer_id, event_id=timer.timer_id
        )
        return Decision("deferred", rule, channel=channel, detail=detail, due_at=due)

    def _links(
        self, request: ContactRequest, prefs: ContactPreferences, mid: str, tz: str
    ) -> dict[str, _Link]:
        return {
            "status": _Link(self, "status", request, prefs, mid, tz),
            "preferences": _Link(self, "preferences", request, prefs, mid, tz),
        }

    def link(
        self,
        kind: str,
        request: ContactRequest,
        prefs: ContactPreferences,
        mid: str | None = None,
        tz: str | None = None,
    ) -> str:
        """A signed link to the case status page or the preference centre.

        A status link names the message it is sent in (`msg`) and its campaign (`cmp`), so an
        answer given on the page is counted for that campaign, and the customer's time zone
        (`tz`: the one the message's times are told in, else the one on file), so the page
        writes times as the customer's clock reads them (short keys: the link is often in an
        SMS).
        """
        signer = self._status_links if kind == "status" else self._pref_links
        if signer is None:
            raise RenderError("the template asks for a signed link but no link secret is set")
        if kind == "status":
            if request.case_id is None:
                raise RenderError("links.status needs a case")
            # The payload the case status page (ingest) verifies.
            claims = {
                "case": request.case_id,
                "customer": prefs.customer_id,
                "locale": prefs.locale,
                "tz": tz or prefs.time_zone,
            }
            if mid is not None:
                claims |= {"msg": mid, "cmp": request.campaign.id}
            token = signer.sign(claims)
            return self.settings.status_url.format(token=token)
        # The payload the preference centre verifies.
        token = signer.sign({"c": prefs.customer_id, "p": "preferences"})
        return self.settings.preferences_url.format(token=token)

    async def _emit(
        self,
        request: ContactRequest,
        prefs: ContactPreferences,
        case: CaseState | None,
        case_json: dict[str, Any],
        channel: Channel,
        window: ContactWindow,
        now: datetime,
        state: RequestState | None,
        history: CapHistory | None,
        reads: _Reads,
        first: bool,
    ) -> Decision:
        campaign = request.campaign
        locale_key, template = pick_template(campaign.messages[channel], prefs.locale)
        mid = message_id(request.request_id, channel, request.attempt)
        # Times are told in the zone the windows placed the customer in: with no zone on file,
        # the number's (a US customer is not told UTC hours while texted by New York's clock).
        tz = window.tz.key
        links = self._links(request, prefs, mid, tz)
        variables: dict[str, Any] = {
            "case": case_json,
            "contact": {"customer_id": prefs.customer_id, "locale": prefs.locale},
            "campaign": {"id": campaign.id, "name": campaign.name},
            "links": links,
        }
        opts: dict[str, Any] = {"locale": prefs.locale, "tz": tz}
        common: dict[str, Any] = {
            "message_id": mid,
            "request_id": request.request_id,
            "campaign_id": campaign.id,
            "customer_id": request.customer_id,
            "case_id": request.case_id,
            "attempt": request.attempt,
            "locale": locale_key,
            "expires_at": request.expires_at,
            # Sent before the window closes or not at all: a backlog or a provider outage
            # must not carry the message into the night (the sender fails it as expired).
            "send_by": window.closes_after(now),
            "created_at": now,
            "to": prefs.channels[channel].address,
        }
        outbound: OutboundSms | OutboundEmail | OutboundVoice
        try:
            if channel == "sms":
                body = render(template.body, variables, **opts)
                measure = measure_sms(body)
                if measure.characters > MAX_SMS_CHARS:
                    # Planned as sent, it would only fail at the provider (21617): a body
                    # too long for any SMS gives way like one over the campaign's limit.
                    return Decision(
                        "failed",
                        "segment-limit",
                        channel=channel,
                        detail=f"{measure.characters} characters > SMS maximum {MAX_SMS_CHARS}",
                    )
                limit = campaign.sms_segment_limit
                if limit is not None and measure.segments > limit:
                    return Decision(
                        "failed",
                        "segment-limit",
                        channel=channel,
                        detail=f"{measure.segments} {measure.encoding} segments > limit {limit}",
                    )
                encoding = "GSM-7" if measure.encoding == "GSM-7" else "UCS-2"
                outbound = OutboundSms(
                    **common, body=body, segments=measure.segments, encoding=encoding
                )
            elif channel == "email":
                # Without a subject of its own the campaign's name is the subject, as written:
                # a name is not a template ("Ticket {#1} follow-up" must not fail every email).
                subject = (
                    render(template.subject, variables, **opts)
                    if template.subject
                    else campaign.name.strip()
                )
                text = render(template.body, variables, **opts)
                html_body = (
                    render(template.html, variables, html=True, **opts) if template.html else None
                )
                unsubscribe = self.link("preferences", request, prefs) if self._pref_links else None
                outbound = OutboundEmail(
                    **common,
                    subject=subject,
                    text=text,
                    html=html_body,
                    unsubscribe_url=unsubscribe,
                    topic=request.campaign.topic,
                )
            else:
                say = render(template.body, variables, **opts)
                # TTS wants the fullest tag the text is written in: the customer's own locale when
                # the template is written for it (a parent of it, or its script with no region:
                # zh-Hant read to a zh-HK customer is said in Cantonese, not zh-TW's Mandarin),
                # else the template's.
                language = prefs.locale if written_for(locale_key, prefs.locale) else locale_key
                outbound = OutboundVoice(**common, say=say, language=language)
        except RenderError as exc:
            RENDER_ERRORS.labels(channel).inc()
            return Decision("failed", "render", channel=channel, detail=str(exc))
        # 8b. the same content as the customer's last message on this channel about this case
        digest = content_digest(outbound, {k: v.url for k, v in links.items() if v.url})
        last = await reads.content()
        repeat = self._repeats(last, digest, mid, now, request)
        if repeat is not None:
            return Decision(
                "suppressed",
                "repeated-content",
                channel=channel,
                detail=repeat,
                reason="repeated-content",
            )
        # The attempt row before the message: a status the sender reports at once (a refused
        # number fails in milliseconds) finds what to escalate to, however long the writes after
        # the send take. A crash in between leaves a row for a message not sent yet: the request,
        # decided again, sends it under the same id and finds the row already there.
        nxt = self.next_request(request, channel, mid)
        await self.ledger.note_attempt(self._attempt_row(request, channel, mid, nxt, now))
        await self.producer.publish(
            OUTBOUND_TOPICS[channel],
            outbound,
            key=request.customer_id,
            event_id=mid,
            subject=request.case_id,
        )
        await asyncio.gather(
            self._after_send(request, case, mid, nxt, now, state, history, first=first),
            self.ledger.note_content(last, digest, mid, now, request),
        )
        return Decision("sent", "ranked", channel=channel, message_id=mid)

    @staticmethod
    def _attempt_row(
        request: ContactRequest,
        channel: Channel,
        mid: str,
        nxt: ContactRequest | None,
        now: datetime,
    ) -> dict[str, Any]:
        """The ledger row of an emitted message: what its statuses and replies escalate or stop."""
        campaign = request.campaign
        return {
            "_id": mid,
            "request_id": request.request_id,
            "attempt": request.attempt,
            "channel": channel,
            "customer_id": request.customer_id,
            "case_id": request.case_id,
            "success": campaign.success,
            # A JSON string: one opaque field to store (see Views), read once if ever.
            "next": nxt.model_dump_json() if nxt else None,
            # Whether an escalation timer waits on this attempt (see _cancel).
            "timer": nxt is not None and campaign.escalate_after_seconds is not None,
            "at": now,
        }

    def _repeats(
        self, last: LastContent, digest: str, mid: str, now: datetime, request: ContactRequest
    ) -> str | None:
        """Why a message would repeat the last one word for word (None when it would not).

        The same message id is this very message decided again after a crash: it goes out
        again and the sender's ledger sends it once. The next scheduled fire of the campaign
        that sent the last one is a repetition the business asked for (a daily reminder, which
        a day's few seconds of jitter would otherwise suppress every other day).
        """
        window = self.settings.repeat_window_seconds
        if window <= 0 or last.at is None or last.digest != digest or last.message_id == mid:
            return None
        if (
            request.trigger_key.startswith(SCHEDULED_FIRE)
            and last.campaign_id == request.campaign.id
            and last.trigger_key != request.trigger_key
        ):
            return None  # the campaign's next fire
        age = (now - last.at).total_seconds()
        if age >= window:
            return None
        return f"same content as the last message on this channel about this case, {age:.0f} s ago"

    async def _after_send(
        self,
        request: ContactRequest,
        case: CaseState | None,
        mid: str,
        nxt: ContactRequest | None,
        now: datetime,
        state: RequestState | None,
        history: CapHistory | None,
        *,
        first: bool,
    ) -> None:
        """Ledger rows for caps and supersession (the attempt's was written before the send);
        the escalation timer.

        `first`: the customer's first message of the contact (not an escalation of one), which
        counts towards the caps, even on a channel taken after one that failed before sending.
        These rows stay after the send: a request decided again after a crash may decide
        otherwise (superseded meanwhile, say), and must not find itself counted or told.
        """
        campaign = request.campaign
        writes: list[Awaitable[Any]] = []
        if first:
            if campaign.counts_towards_cap:
                writes.append(self._note_contact(request, history, now))
            started = request.case_state.updated_at if request.case_state else request.requested_at
            FIRST_CONTACT.observe(max(0.0, (now - started).total_seconds()))
        if state is not None:
            told = case.version if case is not None else 0
            writes.append(self.ledger.save_request_state(state, told=told, by=request.request_id))
        # Independent documents: write them concurrently, all before the offset is committed.
        await asyncio.gather(*writes)
        if nxt is not None and campaign.escalate_after_seconds is not None:
            timer = TimerRequest(
                timer_id=derived_id(mid, "escalate"),
                key=escalation_key(request.request_id, request.attempt),
                due_at=now + timedelta(seconds=campaign.escalate_after_seconds),
                reason="escalation",
                request=nxt,
            )
            await self.producer.publish(
                TIMER_REQUESTED, timer, key=request.customer_id, event_id=timer.timer_id
            )

    async def _note_contact(
        self, request: ContactRequest, history: CapHistory | None, now: datetime
    ) -> None:
        """Count the contact towards caps, from the history the cap rule read (else read it)."""
        if history is None:
            priority = request.campaign.priority.value
            history = await self.ledger.cap_history(request.customer_id, priority)
        await self.ledger.note_contact(request.request_id, history, now)

    @staticmethod
    def next_request(request: ContactRequest, channel: Channel, mid: str) -> ContactRequest | None:
        """The request that tries the next channel, or None when attempts are exhausted."""
        if request.attempt >= request.campaign.max_attempts:
            return None
        return request.model_copy(
            update={
                "attempt": request.attempt + 1,
                "tried_channels": [*request.tried_channels, channel],
                "escalation_of": mid,
                "not_before": None,
            }
        )

    # -- outcomes: delivery statuses and replies ----------------------------------------------

    async def on_status(self, status: DeliveryStatus) -> None:
        """Success stops escalation; a failure escalates to the next channel at once."""
        if status.status not in DELIVERED and status.status not in FAILED:
            # "sent", "queued", "ringing", the dispatcher's own "suppressed"...: neither stops
            # nor advances escalation, so the message's attempt is not even read.
            return
        attempt = await self.ledger.attempt(status.message_id)
        if attempt is None:
            return  # not a message this dispatcher emitted (or emitted before the ledger)
        if status.status in DELIVERED:
            await self.ledger.mark(attempt["request_id"], "delivered", at=self.clock())
            if attempt.get("success") == "delivered":
                await self._cancel(attempt)
        elif status.status in FAILED:
            # The customer did not get these words: the next message may say them again.
            key = content_key(attempt["customer_id"], attempt["channel"], attempt.get("case_id"))
            await self.ledger.forget_content(key, status.message_id)
            if attempt.get("next") is None:
                await self._cancel(attempt)  # nothing to escalate to (no timer either)
                return
            await self._escalate_now(status.message_id, attempt)

    async def _escalate_now(self, mid: str, attempt: dict[str, Any]) -> None:
        """Send the next attempt now, through the scheduler as the escalation timer would.

        It is the attempt's own escalation timer (same id, same key) due now: the scheduler
        moves a pending one earlier, or writes it when the status comes before it. So the
        campaign's gate applies (paused: held, archived: cancelled), there is one timer to
        fire, a reply's cancel of the key stops it too, and nothing is cancelled here. It costs
        a hop through the scheduler: up to its idle poll (its `TIMER_POLL_SECONDS`, 0.5 s).
        """
        nxt = stored_request(attempt["next"])
        rid, number = attempt["request_id"], int(attempt["attempt"])
        timer = TimerRequest(
            timer_id=derived_id(mid, "escalate"),
            key=escalation_key(rid, number),
            due_at=self.clock(),
            reason="escalation",
            request=nxt,
        )
        # An event of its own: this timer request differs from the send's in its due time.
        await self.producer.publish(
            TIMER_REQUESTED,
            timer,
            key=attempt["customer_id"],
            event_id=derived_id(rid, number, "escalate-now"),
        )

    async def on_reply(self, reply: EngagementReply) -> None:
        """A reply is engagement: stop escalating and cancel pending escalation timers."""
        attempts: list[dict[str, Any]] = []
        if reply.message_id:
            found = await self.ledger.attempt(reply.message_id)
            if found is not None:
                attempts = [found]
        if not attempts and reply.case_id:
            attempts = await self.ledger.open_attempts(reply.customer_id, reply.case_id)
        for attempt in attempts:
            await self.ledger.mark(attempt["request_id"], "engaged", at=self.clock())
            await self._cancel(attempt)

    async def _cancel(self, attempt: dict[str, Any]) -> None:
        if attempt.get("timer") is False:
            return  # no escalation timer was set for this attempt: nothing to cancel
        key = escalation_key(attempt["request_id"], int(attempt["attempt"]))
        timer = TimerRequest(timer_id=derived_id(key, "cancel"), key=key, action="cancel")
        await self.producer.publish(
            TIMER_REQUESTED, timer, key=attempt["customer_id"], event_id=timer.timer_id
        )


def escalation_key(request_id: str, attempt: int) -> str:
    """The cancellation key of one attempt's escalation timer."""
    return f"escalate:{request_id}:{attempt}"


class _Link:
    """A signed link, signed only when a template reads it."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        kind: str,
        request: ContactRequest,
        prefs: ContactPreferences,
        mid: str,
        tz: str,
    ) -> None:
        self._d, self._kind, self._request, self._prefs = dispatcher, kind, request, prefs
        self._mid, self._tz = mid, tz

        self.url: str | None = None  # once a template read it: one token per message

    def __str__(self) -> str:
        if self.url is None:
            self.url = self._d.link(self._kind, self._request, self._prefs, self._mid, self._tz)
        return self.url

    def __html__(self) -> str:
        return str(self)


def _trigger_order(request: ContactRequest) -> int:
    """The case version a request was triggered by: what supersession compares."""
    return request.case_version or (request.case_state.version if request.case_state else 0)


class _Reads:
    """The ledger reads a decision may need, started with its claim; unused ones are dropped."""

    def __init__(
        self,
        state: asyncio.Future[RequestState] | None,
        history: asyncio.Future[CapHistory] | None,
        ledger: Ledger,
    ) -> None:
        self._state = state
        self._history = history
        self._ledger = ledger
        self._content: asyncio.Future[LastContent] | None = None

    @classmethod
    def start(cls, dispatcher: Dispatcher, request: ContactRequest) -> _Reads:
        campaign = request.campaign
        ledger = dispatcher.ledger
        state = None
        if request.case_id is not None:
            key = f"{campaign.id}|{request.case_id}|{request.customer_id}"
            state = asyncio.ensure_future(ledger.request_state(key, _trigger_order(request)))
        history = None
        if request.first_contact and campaign.counts_towards_cap:
            history = asyncio.ensure_future(
                ledger.cap_history(request.customer_id, campaign.priority.value)
            )
        return cls(state, history, ledger)

    async def state(self) -> RequestState:
        assert self._state is not None
        return await self._state

    async def history(self) -> CapHistory:
        assert self._history is not None
        return await self._history

    def start_content(self, key: str) -> None:
        """Read the last content sent on the chosen channel about the case (see `content`);
        a channel chosen after one that failed before sending replaces that one's read."""
        if self._content is not None:
            _drop(self._content)
        self._content = asyncio.ensure_future(self._ledger.last_content(key))

    async def content(self) -> LastContent:
        assert self._content is not None
        return await self._content

    def discard(self) -> None:
        """Cancel what no rule awaited (and retrieve what failed unseen)."""
        for read in (self._state, self._history, self._content):
            if read is not None:
                _drop(read)


def _drop(read: asyncio.Future[Any]) -> None:
    """Cancel a read no rule awaits (or retrieve its failure, so none goes unseen)."""
    if not read.done():
        read.cancel()
    elif not read.cancelled():
        read.exception()
