"""Send one outbound SMS at most once, paced, retried within bounds, and report every status."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from herald_contracts import (
    ENGAGEMENT_REPLY,
    DeliveryState,
    EngagementReply,
    OutboundSms,
    utc_now,
)
from herald_kit import CircuitBreaker, EventProducer, Pacer, current_traceparent
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.adapters.provider import (
    ProviderBusy,
    ProviderRejected,
    ProviderTimeout,
    SmsProvider,
)
from herald_sms_sender.domain.keywords import number_key
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

log = logging.getLogger("herald.sms")
# Twilio's "attempt to send to unsubscribed recipient": the number texted STOP.
OPTED_OUT = "21610"
STOPPED = "recipient texted STOP"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a retryable provider failure is retried."""

    attempts: int = 6
    base_seconds: float = 0.5
    cap_seconds: float = 30.0


class SmsSending:
    """Ledger, pacer, breaker, provider and status publication together."""

    def __init__(
        self,
        ledger: Ledger,
        provider: SmsProvider,
        producer: EventProducer,
        *,
        callback_url: str,
        identity: str = "default",
        pacer: Pacer | None = None,
        breaker: CircuitBreaker | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.ledger = ledger
        self.provider = provider
        self.producer = producer
        self.callback_url = callback_url
        self.identity = identity
        self.pacer = pacer or Pacer(0)
        self.breaker = breaker or CircuitBreaker()
        self.retry = retry or RetryPolicy()

    async def publish(
        self,
        ref: dict[str, Any],
        status: DeliveryState,
        *,
        provider_id: str | None = None,
        error_code: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Publish a delivery status; its event id makes a repeat recognisable downstream."""
        await publish_delivery_status(
            self.producer,
            ref,
            status,
            channel="sms",
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
            channel="sms",
            provider_id=provider_id,
            error_code=error_code,
            reason=reason,
        )

    @staticmethod
    def ref(msg: OutboundSms) -> dict[str, Any]:
        """What the ledger keeps of a message to report on it later (no phone number)."""
        return {
            "message_id": msg.message_id,
            "request_id": msg.request_id,
            "campaign_id": msg.campaign_id,
            "customer_id": msg.customer_id,
            "case_id": msg.case_id,
        }

    async def fail(self, ref: dict[str, Any], code: str, reason: str) -> None:
        """Record and report a final failure."""
        if code == OPTED_OUT:
            await self._withdrawn(ref)
        await self.ledger.set(ref["message_id"], "failed", error_code=code, reason=reason)
        await self.publish(ref, "failed", error_code=code, reason=reason)

    async def _withdrawn(self, ref: dict[str, Any]) -> None:
        """The number opted out (it texted STOP to us, or the provider refused it as opted
        out): tell preferences that this customer's SMS consent is withdrawn.

        The STOP itself reaches preferences only for the customer last messaged at the number,
        and only while that send row lasts; a STOP sent later than that, or a number that two
        customers share, is known here first, when a send is refused. Published before the
        failure is recorded, so a crash in between repeats it (under the same event id). No
        message or case is named: the customer did not answer this message, and its
        escalation to the next channel must go on."""
        reply = EngagementReply(
            reply_id=f"sms-opted-out-{ref['message_id']}",
            customer_id=ref["customer_id"],
            channel="sms",
            intent="stop",
            at=utc_now(),
        )
        await self.producer.publish(
            ENGAGEMENT_REPLY, reply, key=reply.customer_id, event_id=reply.reply_id
        )

    async def send(self, msg: OutboundSms) -> None:
        """Send unless the ledger says it was sent or may have been."""
        now = utc_now()
        ref = self.ref(msg)
        key = number_key(msg.to)
        # The expiry is the campaign's window for a call-back the customer may ask for in reply,
        # spoken in the language the SMS was written in.
        # The message's trace is kept with it too (written with the claim, no write of its
        # own): the provider's status callbacks and the customer's replies publish in it.
        meta = {
            **ref,
            "number_key": key,
            "expires_at": msg.expires_at,
            "locale": msg.locale,
            "traceparent": current_traceparent(),
        }
        # This send's claim token: a wait before the provider call (pacer, retry pause) may
        # outlast a rebalance, and the consumer that gets the partition claims the row again.
        claim = meta["claim"] = uuid.uuid4().hex
        # Nothing to wait for before the provider call (no pacing, no hold, breaker closed): the
        # claim marks the row 'sending' itself. The opt-out read goes alongside the claim.
        direct = self.pacer.ready(self.identity) and self.breaker.state == "closed"
        (may_send, row), opted_out = await asyncio.gather(
            (self.ledger.claim_sending if direct else self.ledger.claim)(
                msg.message_id, now=now, meta=meta
            ),
            self.ledger.is_opted_out(key),
        )
        if not may_send:
            assert row is not None
            if row["status"] == "sending":
                # A crash between the claim and the ledger update: ask the provider whether it
                # took the message; if it cannot say, report 'unknown' and never resend blindly.
                found = await self._reconcile(msg, since=row.get("sending_at") or row["at"])
                if found is not None:
                    await self._sent(ref, found)
                    return
                await self.ledger.set(msg.message_id, "unknown")
                await self.publish(ref, "unknown", reason="found in 'sending' after a restart")
            else:
                await republish_settled(self.producer, ref, row, channel="sms")
            return
        # Claimed first, expiry second: a redelivery after the expiry of a message already sent
        # (or left 'sending') must keep that outcome, not be overwritten with 'failed'.
        # The deadline: the request's expiry or the close of the customer's window, the earlier.
        if msg.deadline is not None and msg.deadline <= now:
            await self.fail(ref, "expired", "expired before send")
            return
        if opted_out:
            await self.fail(ref, OPTED_OUT, STOPPED)
            return
        await self._attempts(msg, ref, key=key, claim=claim, claimed_at=now, marked=direct)

    async def _attempts(
        self,
        msg: OutboundSms,
        ref: dict[str, Any],
        *,
        key: str,
        claim: str,
        claimed_at: datetime,
        marked: bool = False,
    ) -> None:
        """Provider attempts to the number keyed `key` under the claim token `claim`; `marked`:
        the claim already marked the row 'sending' (and the opt-out was read alongside it)."""
        callback = f"{self.callback_url}?mid={quote(msg.message_id, safe='')}"
        last = "none"
        paused: PauseOutcome | None = None
        # Waits on the breaker (open, or a half-open trial in flight) send nothing, so they take
        # none of the message's attempts, or a slow trial would fail every message waiting on it
        # without one request to the provider; the deadline bounds them instead.
        breaker_until = breaker_deadline(msg.deadline, claimed_at)
        # The opt-out read alongside the claim holds until the message waits for something.
        read_fresh = True
        attempt = 0
        while attempt < self.retry.attempts:
            premarked, marked = marked, False
            wait = self.breaker.wait()
            if wait > 0:
                last = "circuit-open"
                read_fresh = False
                # The row is 'retry' meanwhile.
                paused = await self._pause(msg, wait, claim, until=breaker_until)
                if paused != "resumed":
                    break
                continue
            attempt += 1
            try:
                if not (premarked and self.pacer.ready(self.identity)):
                    if premarked:
                        # A hold came up since the claim: never wait while the row says
                        # 'sending'.
                        await self.ledger.set(msg.message_id, "queued")
                    if await self.pacer.acquire(self.identity):
                        read_fresh = False
                    # The opt-out is read again after every wait (the pacer, a 429's hold, a
                    # retry pause, an open breaker): a STOP that came meanwhile must stop this
                    # very message, not only the next one. Read alongside the conditional update;
                    # a free slot on the first attempt waited for nothing, and the claim's read
                    # stands.
                    started, opted_out = await asyncio.gather(
                        self.ledger.start_sending(msg.message_id, claim=claim, now=utc_now()),
                        self._opted_out_since_read(key, fresh=read_fresh),
                    )
                    if not started:
                        # The wait outlasted a rebalance and the consumer that got the partition
                        # claimed the row again: that one sends (or sent) it; its outcome stands.
                        log.info("claimed again elsewhere before sending; left to that consumer")
                        return
                    if msg.deadline is not None and msg.deadline <= utc_now():
                        # The pacer's wait (a 429's hold, a queue of sends) outlasted the
                        # deadline. Checked once the row is ours again: no other consumer's
                        # outcome is touched.
                        await self.fail(ref, *expired_waiting(last, "to send"))
                        return
                    if opted_out:
                        await self.fail(ref, OPTED_OUT, STOPPED)
                        return
                try:
                    sent = await self.provider.send(
                        to=msg.to, body=msg.body, status_callback=callback
                    )
                except ProviderRejected as exc:
                    self.breaker.success()  # the provider is healthy; the message is not
                    await self.fail(ref, exc.code or "rejected", exc.detail)
                    return
                except ProviderTimeout as exc:
                    # No verdict (a timeout, a lost connection, a 5xx that may have been
                    # taken): look the message up; not found, or the look-up failing, is
                    # 'unknown', never a second send the customer might get twice.
                    self.breaker.failure()
                    found = await self._reconcile(msg, since=claimed_at)
                    if found is not None:
                        await self._sent(ref, found)
                        return
                    await self.ledger.set(msg.message_id, "unknown", error_code=exc.code)
                    await self.publish(ref, "unknown", error_code=exc.code, reason=exc.detail)
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
                    await self._sent(ref, sent.provider_id)
                    return
            finally:
                # An attempt that ends without the provider's verdict (claimed elsewhere before
                # it went out, a ledger error, a 429, a cancellation) hands a half-open trial
                # back, or every later SMS would wait for a verdict that never comes.
                self.breaker.release()
            if attempt == self.retry.attempts:
                break
            read_fresh = False
            paused = await self._pause(msg, delay, claim)
            if paused != "resumed":
                break
        if paused == "taken":
            return  # another consumer holds the row now; its outcome stands
        await self.fail(ref, last, gave_up_reason(paused, last))

    async def _opted_out_since_read(self, key: str, *, fresh: bool) -> bool:
        """Whether the number opted out: read again unless the read alongside the claim is
        `fresh` (no wait since), when its answer (no opt-out, or the claim had stopped there)
        still holds."""
        return False if fresh else await self.ledger.is_opted_out(key)

    async def _pause(
        self, msg: OutboundSms, delay: float, claim: str, *, until: datetime | None = None
    ) -> PauseOutcome:
        """Sleep before the next attempt unless that passes the deadline (or `until`, for a
        wait on the breaker; see pause_unclaimed)."""
        expires_at = until if until is not None else msg.deadline
        return await pause_unclaimed(
            self.ledger, msg.message_id, delay=delay, expires_at=expires_at, claim=claim
        )

    async def _reconcile(self, msg: OutboundSms, *, since: datetime) -> str | None:
        try:
            found = await self.provider.find_sent(to=msg.to, body=msg.body, since=since)
        except Exception as exc:  # any failure here means "don't know": treat as not found
            log.warning("reconcile failed", extra={"error": type(exc).__name__})
            return None
        for sid in found:
            row = await self.ledger.by_provider_id(sid)
            if row is None or row["_id"] == msg.message_id:
                return sid
        return None

    async def _sent(self, ref: dict[str, Any], provider_id: str) -> None:
        await self.ledger.set(ref["message_id"], "sent", provider_id=provider_id)
        await self.publish(ref, "sent", provider_id=provider_id)
