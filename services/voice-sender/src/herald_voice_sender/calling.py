"""Place each IVR call at most once, paced and retried within bounds; report every outcome."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from herald_contracts import (
    CALLBACK_CAMPAIGN,
    CALLBACK_MESSAGE,
    ENGAGEMENT_REPLY,
    TIMER_REQUESTED,
    DeliveryState,
    EngagementReply,
    Intent,
    OutboundVoice,
    TimerRequest,
    utc_now,
)
from herald_kit import CircuitBreaker, Doc, EventProducer, Pacer, current_traceparent
from herald_twilio import (
    PauseOutcome,
    breaker_deadline,
    busy_delay,
    expired_waiting,
    gave_up_reason,
    pause_unclaimed,
    publish_delivery_status,
    publish_reported_status,
    republish_settled,
)
from herald_voice_sender.adapters.ledger import CallLedger, number_key
from herald_voice_sender.adapters.provider import (
    ProviderBusy,
    ProviderRejected,
    ProviderTimeout,
    VoiceProvider,
)
from herald_voice_sender.domain.ivr import tts_language
from herald_voice_sender.domain.window import (
    CallingHours,
    callback_slot,
    hours_close,
    zones_for,
)

log = logging.getLogger("herald.voice")

# A call-back whose slot is at most this far ahead is waited for in place rather than deferred
# through a scheduler timer: it covers clock skew between the scheduler's host and this one.
CALLBACK_WAIT = timedelta(seconds=30)
# The longest id an event carries (herald_contracts' `Id`).
ID_MAX = 200
# A call not placed because the callee chose stop on an earlier call (the keypad's stop key or
# the word said): the sms-sender's 21610 for a call, which Twilio has no code for.
OPTED_OUT = "opted-out"
STOPPED = "the customer chose stop on a call"


def callback_timer_id(reply_id: str, slot: datetime) -> str:
    """The scheduler timer deferring a call-back to `slot`: one per reply and slot."""
    timer_id = f"callback:{reply_id}:{slot.astimezone(UTC):%Y%m%dT%H%MZ}"
    if len(timer_id) > ID_MAX:  # a reply id near the limit: its digest keeps the id valid
        digest = hashlib.sha256(reply_id.encode()).hexdigest()[:32]
        timer_id = f"callback:{digest}:{slot.astimezone(UTC):%Y%m%dT%H%MZ}"
    return timer_id


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a retryable provider failure is retried."""

    attempts: int = 5
    base_seconds: float = 0.5
    cap_seconds: float = 30.0


@dataclass(frozen=True)
class Call:
    """What placing a call needs, whether from outbound.voice.v1 or a call-back request."""

    message_id: str
    to: str
    language: str
    ref: dict[str, Any]
    expires_at: Any = None
    kind: str = "ivr"  # or "callback"
    # When the call was asked for: the outbound message's creation (the dispatcher's consent
    # check), or the customer's call-back request. None: always stopped by an opt-out.
    requested_at: datetime | None = None


class VoiceCalling:
    """Ledger, pacer, breaker, provider and publication together."""

    def __init__(
        self,
        ledger: CallLedger,
        provider: VoiceProvider,
        producer: EventProducer,
        *,
        base_url: str,
        identity: str,
        machine_detection: bool = True,
        pacer: Pacer | None = None,
        breaker: CircuitBreaker | None = None,
        retry: RetryPolicy | None = None,
        calling_hours: CallingHours | None = None,
        callback_max_defer: timedelta = timedelta(hours=24),
        opt_out_hold: timedelta = timedelta(days=1),
    ) -> None:
        self.ledger = ledger
        self.provider = provider
        self.producer = producer
        self.base_url = base_url
        self.identity = identity
        self.machine_detection = machine_detection
        self.pacer = pacer or Pacer(0)
        self.breaker = breaker or CircuitBreaker()
        self.retry = retry or RetryPolicy()
        self.calling_hours = calling_hours or CallingHours()
        self.callback_max_defer = callback_max_defer
        self.opt_out_hold = opt_out_hold

    def url(self, what: str, message_id: str, **query: str) -> str:
        """A webhook URL of ours for one call (the message id rides in the signed URL)."""
        extra = "".join(f"&{k}={quote(v, safe='')}" for k, v in query.items())
        return (
            f"{self.base_url}/webhooks/twilio/voice/{what}?mid={quote(message_id, safe='')}{extra}"
        )

    async def publish_status(
        self,
        ref: dict[str, Any],
        status: DeliveryState,
        *,
        provider_id: str | None = None,
        error_code: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Publish a delivery status of a call."""
        await publish_delivery_status(
            self.producer,
            ref,
            status,
            channel="voice",
            provider_id=provider_id,
            error_code=error_code,
            reason=reason,
        )

    async def publish_reported(
        self,
        ref: dict[str, Any],
        status: DeliveryState,
        *,
        provider_id: str | None = None,
        error_code: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Publish a status a Twilio callback reported; counted once however often Twilio
        retries the callback (see `publish_reported_status`)."""
        await publish_reported_status(
            self.producer,
            self.ledger,
            ref,
            status,
            channel="voice",
            provider_id=provider_id,
            error_code=error_code,
            reason=reason,
        )

    async def publish_reply(
        self, ref: dict[str, Any], *, reply_id: str, intent: Intent, text: str | None
    ) -> None:
        """Publish what the callee chose."""
        reply = EngagementReply(
            reply_id=reply_id,
            customer_id=ref["customer_id"],
            channel="voice",
            intent=intent,
            text=text,
            message_id=ref["message_id"],
            campaign_id=ref.get("campaign_id"),
            case_id=ref.get("case_id"),
            at=utc_now(),
        )
        await self.producer.publish(
            ENGAGEMENT_REPLY, reply, key=reply.customer_id, event_id=reply_id, subject=reply.case_id
        )

    @staticmethod
    def from_outbound(msg: OutboundVoice) -> Call:
        """A call for a rendered IVR message."""
        ref = {
            "message_id": msg.message_id,
            "request_id": msg.request_id,
            "campaign_id": msg.campaign_id,
            "customer_id": msg.customer_id,
            "case_id": msg.case_id,
        }
        # The call's expiry: the request's, or the close of the customer's window if earlier.
        # Said in the tag text-to-speech knows (zh-Hant-TW, zh-Hant -> zh-TW), as a call-back is.
        return Call(
            msg.message_id,
            msg.to,
            tts_language(msg.language),
            ref,
            msg.deadline,
            requested_at=msg.created_at,
        )

    def stopped(self, call: Call, stop: Doc | None) -> bool:
        """Whether the stop the number chose on a call (`stop`, see `CallLedger.stop_of`)
        forbids this call.

        Preferences learns of the stop through engagement.replies.v1 and the dispatcher through
        preferences, so a call it handed over shortly after the stop may not have seen it: any
        call asked for up to `opt_out_hold` after the stop is stopped too. A call asked for
        later passed a consent check that knew of the stop, so consent was given again (the
        preference centre), which this service cannot see. A call-back asked for after the stop
        is the customer's own later word: it is placed.
        """
        if stop is None:
            return False
        if call.requested_at is None:
            return True
        hold = self.opt_out_hold if call.kind == "ivr" else timedelta(0)
        stopped_at: datetime = stop["at"]
        return call.requested_at <= stopped_at + hold

    async def place(self, call: Call, *, say: str = "") -> None:
        """Place the call unless the ledger says it was placed or may have been."""
        ref = call.ref
        now = utc_now()
        # The number is kept (it is needed to call back); it is never logged.
        meta = {**ref, "to": call.to, "language": call.language, "say": say, "kind": call.kind}
        # The call's trace, kept with the claim (no write of its own): Twilio's webhooks for
        # the call (its answer, the callee's choice, its status) publish in it.
        meta["traceparent"] = current_traceparent()
        # This placing's claim token: a wait before the provider call (pacer, retry pause) may
        # outlast a rebalance, and the consumer that gets the partition claims the row again.
        claim = meta["claim"] = uuid.uuid4().hex
        # The opt-out read goes alongside the claim; when nothing stands between the claim and
        # the provider call (no pacing, no hold, breaker closed) it is not read again.
        direct = self.pacer.ready(self.identity) and self.breaker.state == "closed"
        key = number_key(call.to)
        (may, row), stop = await asyncio.gather(
            self.ledger.claim(call.message_id, now=now, meta=meta),
            self.ledger.stop_of(key),
        )
        if not may:
            assert row is not None
            if row["status"] == "sending":
                # A crash during the provider call: ask Twilio whether the call exists; if it
                # cannot say, report 'unknown' and never place it again blindly.
                found = await self._lookup(call, since=row.get("sending_at") or row["at"])
                if found is not None:
                    await self._sent(ref, found)
                    return
                await self.ledger.set(call.message_id, "unknown")
                await self.publish_status(
                    ref, "unknown", reason="found in 'sending' after a restart"
                )
            else:
                await republish_settled(self.producer, ref, row, channel="voice")
            return
        if call.expires_at is not None and call.expires_at <= now:
            await self._fail(ref, "expired", "expired before the call")
            return
        if self.stopped(call, stop):
            await self._refuse(ref, stop)
            return
        last = "none"
        paused: PauseOutcome | None = None
        # Waits on the breaker (open, or a half-open trial in flight) place no call, so they take
        # none of the call's attempts, or a slow trial would fail every call waiting on it
        # without one request to the provider; the expiry bounds them instead.
        breaker_until = breaker_deadline(call.expires_at, now)
        attempt = 0
        while attempt < self.retry.attempts:
            fresh, direct = direct, False
            wait = self.breaker.wait()
            if wait > 0:
                last = "circuit-open"
                paused = await self._pause(call, wait, claim, until=breaker_until)
                if paused != "resumed":
                    break
                continue
            attempt += 1
            try:
                # The opt-out is read again after every wait (the pacer, a 429's hold, a retry
                # pause, an open breaker): a stop chosen meanwhile (on another call to the
                # number) must stop this very call. Read alongside the conditional update.
                fresh = fresh and self.pacer.ready(self.identity)
                await self.pacer.acquire(self.identity)
                sending_at = utc_now()
                started, stop = await asyncio.gather(
                    self.ledger.start_sending(call.message_id, claim=claim, now=sending_at),
                    _none() if fresh else self.ledger.stop_of(key),
                )
                if not started:
                    # The wait outlasted a rebalance and the consumer that got the partition
                    # claimed the row again: that one places (or placed) the call; its outcome
                    # stands.
                    log.info("claimed again elsewhere before calling; left to that consumer")
                    return
                if call.expires_at is not None and call.expires_at <= sending_at:
                    # The pacer's wait (a 429's hold, a queue of calls) outlasted the expiry.
                    # Checked once the row is ours again, so no other consumer's outcome is
                    # overwritten.
                    await self._fail(ref, *expired_waiting(last, "to call"))
                    return
                if self.stopped(call, stop):
                    await self._refuse(ref, stop)
                    return
                try:
                    placed = await self.provider.call(
                        to=call.to,
                        url=self.url("twiml", call.message_id),
                        status_callback=self.url("status", call.message_id),
                        machine_detection=self.machine_detection and call.kind == "ivr",
                    )
                except ProviderRejected as exc:
                    self.breaker.success()
                    await self._fail(ref, exc.code or "rejected", exc.detail)
                    return
                except ProviderTimeout as exc:
                    # The call may be ringing already: look it up, never place a second one
                    # blindly.
                    self.breaker.failure()
                    found = await self._lookup(call, since=sending_at)
                    if found is not None:
                        await self._sent(ref, found)
                        return
                    await self.ledger.set(call.message_id, "unknown", error_code=exc.code)
                    await self.publish_status(
                        ref, "unknown", error_code=exc.code, reason=exc.detail
                    )
                    return
                except ProviderBusy as exc:
                    last, delay = busy_delay(
                        exc,
                        attempt,
                        base=self.retry.base_seconds,
                        cap=self.retry.cap_seconds,
                        pacer=self.pacer,
                        breaker=self.breaker,
                        identity=self.identity,
                    )
                else:
                    self.breaker.success()
                    await self._sent(ref, placed.provider_id)
                    return
            finally:
                # An attempt that ends without the provider's verdict (claimed elsewhere before
                # the call, a ledger error, a 429, a cancellation) hands a half-open trial back,
                # or every later call would wait for a verdict that never comes.
                self.breaker.release()
            if attempt == self.retry.attempts:
                break
            paused = await self._pause(call, delay, claim)
            if paused != "resumed":
                break
        if paused == "taken":
            return  # another consumer holds the row now; its outcome stands
        await self._fail(ref, last, gave_up_reason(paused, last))

    async def _sent(self, ref: dict[str, Any], provider_id: str) -> None:
        await self.ledger.set(ref["message_id"], "sent", provider_id=provider_id)
        await self.publish_status(ref, "sent", provider_id=provider_id)

    async def _lookup(self, call: Call, *, since: datetime) -> str | None:
        """The sid of the one call Twilio created for this message since `since`, else None.

        Twilio's Call resource echoes neither our Url nor our StatusCallback, so a call is
        recognised by To, From and creation time, minus the sids other ledger rows own. Two
        or more candidates are ambiguous: None ('unknown'), never a guess.
        """
        try:
            sids = await self.provider.find_placed(to=call.to, since=since)
        except Exception as exc:  # any failure here means "don't know"
            log.warning("call lookup failed", extra={"error": type(exc).__name__})
            return None
        mine: list[str] = []
        for sid in sids:
            row = await self.ledger.by_provider_id(sid)
            if row is None or row["_id"] == call.message_id:
                mine.append(sid)
        return mine[0] if len(mine) == 1 else None

    async def _refuse(self, ref: dict[str, Any], stop: Doc | None) -> None:
        """Fail a call for the stop chosen at its number; preferences hears of it for the
        call's customer unless the stop was chosen on a call to them (it heard then)."""
        if stop is None or ref["customer_id"] not in stop.get("customers", []):
            await self._withdrawn(ref)
        await self._fail(ref, OPTED_OUT, STOPPED)

    async def _fail(self, ref: dict[str, Any], code: str, reason: str) -> None:
        await self.ledger.set(ref["message_id"], "failed", error_code=code, reason=reason)
        await self.publish_status(ref, "failed", error_code=code, reason=reason)

    async def _withdrawn(self, ref: dict[str, Any]) -> None:
        """A call refused for a stop chosen at its number: tell preferences that this
        customer's voice consent is withdrawn, as the sms-sender does for a refused SMS.

        The stop itself reached preferences for the customer of the call it was chosen on; a
        number customers share is known here first, when a call to it is refused. (Not told
        again for that customer: a call handed over before they consented again must not
        withdraw that consent.) Published before the failure is recorded, so a crash in between
        repeats it (same event id). No message or case is named: the customer did not answer
        this call, and its escalation to the next channel must go on."""
        reply = EngagementReply(
            reply_id=f"voice-opted-out-{ref['message_id']}"[:ID_MAX],
            customer_id=ref["customer_id"],
            channel="voice",
            intent="stop",
            at=utc_now(),
        )
        await self.producer.publish(
            ENGAGEMENT_REPLY, reply, key=reply.customer_id, event_id=reply.reply_id
        )

    async def _pause(
        self, call: Call, delay: float, claim: str, *, until: datetime | None = None
    ) -> PauseOutcome:
        """Sleep before the next attempt unless that passes the expiry (or `until`, for a wait
        on the breaker; see pause_unclaimed)."""
        expires_at = until if until is not None else call.expires_at
        return await pause_unclaimed(
            self.ledger, call.message_id, delay=delay, expires_at=expires_at, claim=claim
        )

    async def callback(self, reply: EngagementReply) -> None:
        """A customer asked to be called back: call the number they gave, straight to an agent,
        inside legal calling hours and before the campaign's window ends.

        Outside the hours the call-back is deferred durably: a scheduler timer
        (`timers.requests.v1`) re-publishes this very reply when the hours open, and it comes
        back here. A window that closes before the hours open means no call, reported failed.
        """
        if reply.callback_number is None:
            log.info("call-back request without a number", extra={"reply": reply.reply_id})
            return
        mid = f"{CALLBACK_MESSAGE}{reply.reply_id}"
        ref: dict[str, Any] = {
            "message_id": mid,
            "request_id": reply.message_id or reply.reply_id,
            # Reported for the campaign whose message the customer answered, whose stats count
            # call-backs apart from its channels (by the message id's prefix).
            "campaign_id": reply.campaign_id or CALLBACK_CAMPAIGN,
            "customer_id": reply.customer_id,
            "case_id": reply.case_id,
        }
        now = utc_now()
        until = reply.callback_until or reply.at + self.callback_max_defer
        zones = zones_for(reply.callback_number)
        slot = callback_slot(hours=self.calling_hours, zones=zones, now=now, until=until)
        if slot is None:
            may, row = await self.ledger.claim(mid, now=now, meta={**ref, "kind": "callback"})
            if may:
                await self._fail(
                    ref, "outside-window", "the calling window closes before calling hours open"
                )
            elif row is not None:
                await republish_settled(self.producer, ref, row, channel="voice")
            return
        if slot - now > CALLBACK_WAIT:
            timer = TimerRequest(
                timer_id=callback_timer_id(reply.reply_id, slot),
                key=mid,
                due_at=slot,
                reason="call-back outside calling hours",
                reply=reply,
            )
            # Idempotent per slot: the scheduler keeps one timer per id, so a redelivered reply
            # is no second call-back. The timer's own re-publication, handled once the hours
            # have closed again (a backlog) or after they changed, asks for a later slot: a new
            # id, which the scheduler takes. Slots only move later and the window bounds them,
            # so this ends in a call or in `outside-window`.
            await self.producer.publish(
                TIMER_REQUESTED, timer, key=reply.customer_id, event_id=timer.timer_id
            )
            log.info("call-back deferred", extra={"reply": reply.reply_id, "due_at": str(slot)})
            return
        if slot > now:
            # A moment before the hours open: this host's clock a little behind the scheduler's
            # that fired the timer, or a reply that came just early. Deferring again would ask
            # for this very slot, a timer id the scheduler already has (dropped as a replay):
            # wait for the slot here instead.
            await asyncio.sleep((slot - now).total_seconds())
            now = slot
        # Retries stop at the end of the window or of the calling hours, whichever comes first.
        closes = hours_close(hours=self.calling_hours, zones=zones, now=now)
        # Spoken in the language the customer was addressed in (English when unknown).
        language = tts_language(reply.locale or "en")
        call = Call(
            mid,
            reply.callback_number,
            language,
            ref,
            expires_at=min(until, closes),
            kind="callback",
            requested_at=reply.at,
        )
        await self.place(call)


async def _none() -> None:
    """No read: the opt-out was read with the claim and nothing was waited for since."""
    return None
