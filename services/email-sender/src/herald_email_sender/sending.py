"""Send one outbound email exactly once, paced, retried within bounds, and report every status."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from pymongo.errors import PyMongoError

from herald_contracts import (
    DELIVERY_STATUS,
    ENGAGEMENT_REPLY,
    DeliveryState,
    DeliveryStatus,
    EngagementReply,
    OutboundEmail,
    utc_now,
)
from herald_email_sender.adapters.ledger import BatchedLedger
from herald_email_sender.adapters.smtp import (
    Accepted,
    EmailRelay,
    RelayAmbiguous,
    RelayError,
    RelayRefused,
    RelayUnavailable,
)
from herald_email_sender.config import Settings
from herald_email_sender.domain.message import address_key, build_email
from herald_kit import (
    CircuitBreaker,
    Doc,
    EventProducer,
    InvalidInput,
    LinkSigner,
    Pacer,
    backoff,
    observe_provider_request,
)

log = logging.getLogger("herald.email")
SENDER = "email-sender"  # the name its pacer, breaker and provider metrics carry
OUTCOMES = Counter(
    "herald_email_outcomes_total",
    "Emails by outcome (sent, failed, unknown, skipped) and error code.",
    ["outcome", "code"],
)
RELAY_ATTEMPTS = Counter("herald_email_relay_attempts_total", "Relay calls, by result.", ["result"])
Sleep = Callable[[float], Awaitable[None]]
# An email not sent because its recipient unsubscribed (the one-click link of an earlier email)
# from what it covers: the voice-sender's code for a stop, the sms-sender's 21610.
OPTED_OUT = "opted-out"
UNSUBSCRIBED = "recipient unsubscribed"
# How long the unsubscribes read with the claim stand for a send that waited for nothing (the
# pacer off and free, the breaker closed, a pooled connection ready): a longer wait (a full
# pool, a slow connect) reads them again before MAIL FROM.
CLAIM_READ_STANDS = 1.0


class ClaimLost(Exception):
    """Another consumer claimed the message again (a rebalance) before it went out."""


class ExpiredWaiting(Exception):
    """The message's deadline passed while it waited for a connection or the pacer."""


class Unsubscribed(Exception):
    """The recipient unsubscribed from this email while it waited."""

    def __init__(self, reason: str, withdrawn: Doc) -> None:
        super().__init__(reason)
        self.reason = reason
        self.withdrawn = withdrawn


class EmailSending:
    """Ledger, relay, pacer, breaker and status publication together."""

    def __init__(
        self,
        *,
        ledger: BatchedLedger,
        relay: EmailRelay,
        producer: EventProducer,
        settings: Settings,
        signer: LinkSigner | None,
        pacer: Pacer | None = None,
        breaker: CircuitBreaker | None = None,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.ledger = ledger
        self.relay = relay
        self.producer = producer
        self.settings = settings
        self.signer = signer
        # The kit's pacer and breaker, as the other senders use them; the relay is the identity.
        self.pacer = pacer or Pacer(settings.rate_per_second, settings.rate_burst, name=SENDER)
        self.breaker = breaker or CircuitBreaker(
            threshold=settings.breaker_threshold,
            cooldown=settings.breaker_cooldown_seconds,
            name=SENDER,
        )
        self.relay_id = f"{settings.smtp_host}:{settings.smtp_port}"
        self._sleep = sleep
        self._rand = rand

    def unsubscribe_url(self, msg: OutboundEmail) -> str | None:
        """The signed one-click URL for this message, or None without a link secret."""
        if self.signer is None:
            return None
        base = self.settings.unsubscribe_base()  # https, unless allowed for local development
        # The topic, when the message names one, makes the unsubscribe this topic's alone
        # (RFC 8058: unsubscribe from what this message belongs to); the preference centre
        # is where the customer stops every email.
        claims = {"c": msg.customer_id, "m": msg.message_id, "k": msg.case_id, "t": msg.topic}
        token = self.signer.sign(claims)
        return f"{base}/v1/unsubscribe/{token}"

    async def status(
        self,
        msg: OutboundEmail,
        status: DeliveryState,
        *,
        provider_id: str | None = None,
        error_code: str | None = None,
        reason: str | None = None,
        repeat: bool = False,
    ) -> None:
        """Publish a delivery status of a message (its id makes a republish a duplicate).

        `repeat`: the recorded outcome of a redelivered message, published again; it was
        counted when it was decided, so it is not counted twice."""
        if not repeat:
            OUTCOMES.labels(status, error_code or "").inc()
        await self.producer.publish(
            DELIVERY_STATUS,
            DeliveryStatus(
                message_id=msg.message_id,
                request_id=msg.request_id,
                campaign_id=msg.campaign_id,
                customer_id=msg.customer_id,
                case_id=msg.case_id,
                channel="email",
                status=status,
                provider_id=provider_id,
                error_code=error_code,
                reason=reason,
                at=utc_now(),
            ),
            key=msg.customer_id,
            event_id=f"{msg.message_id}:{status}",
            subject=msg.case_id,
        )

    async def _refuse(self, msg: OutboundEmail, reason: str, withdrawn: Doc | None) -> None:
        """Fail an email for an unsubscribe at its address; preferences hears of it for the
        email's customer unless the unsubscribe was said on an email to them (it heard then)."""
        if withdrawn is None or msg.customer_id not in withdrawn.get("customers", []):
            await self._withdrawn(msg, topic=None if reason == UNSUBSCRIBED else msg.topic)
        await self._fail(msg, OPTED_OUT, reason)

    async def _fail(self, msg: OutboundEmail, code: str, reason: str) -> None:
        await self.ledger.set(msg.message_id, "failed", error_code=code, reason=reason)
        await self.status(msg, "failed", error_code=code, reason=reason)

    async def _withdrawn(self, msg: OutboundEmail, *, topic: str | None) -> None:
        """An email refused for an unsubscribe at its address: tell preferences that this
        customer withdrew what the unsubscribe covered (every email, or `topic`), as the
        sms-sender does for a refused SMS.

        The unsubscribe itself reached preferences for the customer of the email it came with;
        an address customers share is known here first, when an email to it is refused. (Not
        told again for that customer: an email handed over before they subscribed again must
        not withdraw that.) Published before the failure is recorded, so a crash in between
        repeats it (same event id). No message or case is named: the customer did not answer
        this email, and its escalation to the next channel must go on."""
        reply = EngagementReply(
            reply_id=f"email-opted-out-{msg.message_id}"[:200],
            customer_id=msg.customer_id,
            channel="email",
            intent="unsubscribe",
            topic=topic,
            at=utc_now(),
        )
        await self.producer.publish(
            ENGAGEMENT_REPLY, reply, key=reply.customer_id, event_id=reply.reply_id
        )

    def unsubscribed(self, msg: OutboundEmail, withdrawn: Doc | None) -> str | None:
        """Why this email may not go out, given what its address unsubscribed from (`withdrawn`,
        see `BatchedLedger.unsubscribes`); None when nothing it withdrew covers it.

        An unsubscribe from every email covers every email; one from a topic (the link of an
        email that named it) covers that topic's emails only, as preferences reads it.
        Preferences learns of it from the reply and the dispatcher from preferences, so an
        email handed over shortly after it may not have seen it: one created up to
        `opt_out_hold_seconds` after the unsubscribe is covered too. One created later passed
        a consent check that knew of it: the customer subscribed again (the preference
        centre), which this service cannot see.
        """
        if withdrawn is None:
            return None
        hold = timedelta(seconds=self.settings.opt_out_hold_seconds)

        def covers(at: datetime | None) -> bool:
            if at is None:
                return False
            at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # naive is UTC
            return msg.created_at <= at + hold

        if covers(withdrawn.get("all")):
            return UNSUBSCRIBED
        if msg.topic is not None and covers((withdrawn.get("topics") or {}).get(msg.topic)):
            return f"recipient unsubscribed from {msg.topic}"
        return None

    def _expired(self, msg: OutboundEmail, after: float = 0.0) -> bool:
        # The request's expiry, or the close of the customer's quiet-hours window if earlier.
        deadline = msg.deadline
        if deadline is None:
            return False
        return (deadline - utc_now()).total_seconds() <= after

    async def send(self, msg: OutboundEmail) -> None:
        """Send unless the ledger says it was sent or may have been."""
        claim = uuid.uuid4().hex
        key = address_key(msg.to)
        # What the address unsubscribed from is read alongside the claim; a send that then
        # waits for nothing (see CLAIM_READ_STANDS) does not read it twice.
        fresh = self.pacer.ready(self.relay_id) and self.breaker.state == "closed"
        read_at = time.monotonic()
        (may_send, row), withdrawn = await asyncio.gather(
            self.ledger.claim(
                msg.message_id, now=utc_now(), meta={"claim": claim, "address_key": key}
            ),
            self.ledger.unsubscribes(key),
        )
        if not may_send:
            assert row is not None
            if row["status"] == "sending":
                # A crash during the SMTP transaction (or before its outcome was written): the
                # relay may have the message, so never resend blindly.
                await self.ledger.set(msg.message_id, "unknown")
                await self.status(msg, "unknown", reason="found in 'sending' after a restart")
            elif row["status"] in ("sent", "failed", "unknown"):
                # A stop between the ledger write and the publication would lose the status:
                # publish it again (same event id, so consumers see a duplicate, not news).
                await self.status(
                    msg,
                    row["status"],
                    provider_id=row.get("provider_id"),
                    error_code=row.get("error_code"),
                    reason=row.get("reason"),
                    repeat=True,
                )
            return
        if self._expired(msg):
            await self._fail(msg, "expired", "expired before send")
            return
        reason = self.unsubscribed(msg, withdrawn)
        if reason is not None:
            await self._refuse(msg, reason, withdrawn)
            return
        try:
            email = build_email(
                msg,
                from_address=self.settings.from_address,
                from_name=self.settings.from_name,
                domain=self.settings.message_id_domain,
                unsubscribe_url=self.unsubscribe_url(msg),
            )
        except InvalidInput as exc:
            await self._fail(msg, "invalid-address", exc.detail)
            return
        fresh_until = read_at + CLAIM_READ_STANDS if fresh else None
        await self._attempts(msg, email.recipient, email.data, claim, key, fresh_until)

    async def _attempts(
        self,
        msg: OutboundEmail,
        recipient: str,
        data: bytes,
        claim: str,
        key: str,
        fresh_until: float | None = None,
    ) -> None:
        """Relay attempts under the claim token `claim` to the address keyed `key`;
        `fresh_until`: until when (monotonic) the unsubscribes read with the claim stand."""
        last: RelayError | None = None
        for attempt in range(1, self.settings.send_attempts + 1):
            if attempt > 1:
                fresh_until = None  # a retry pause is a wait
                assert last is not None
                delay = backoff(
                    attempt - 1,
                    base=self.settings.send_backoff_base_seconds,
                    cap=self.settings.send_backoff_cap_seconds,
                    rand=self._rand,
                )
                if self._expired(msg, after=delay):
                    await self._fail(msg, last.code, f"expired while retrying: {last.detail}")
                    return
                # Nothing went out: a crash while we wait must not read as 'maybe sent'.
                await self.ledger.set(msg.message_id, "retry", error_code=last.code)
                await self._sleep(delay)
                claim = uuid.uuid4().hex
                may_send, _ = await self.ledger.claim(
                    msg.message_id, now=utc_now(), meta={"claim": claim}
                )
                if not may_send:
                    return  # another consumer took it over after a rebalance
            if self.breaker.state != "closed":
                fresh_until = None  # so is a wait on the breaker (asking would take a trial)
            if not await self._breaker_allows(msg):
                await self._fail(msg, "circuit-open", "expired while the relay was failing")
                return
            try:
                accepted = await self._relay(
                    msg, claim, recipient, data, key=key, fresh_until=fresh_until
                )
                RELAY_ATTEMPTS.labels("accepted").inc()
                self.breaker.success()
            except ClaimLost:
                log.info("claimed again elsewhere before sending; left to that consumer")
                return
            except Unsubscribed as exc:
                await self._refuse(msg, exc.reason, exc.withdrawn)
                return
            except ExpiredWaiting:
                if last is None:
                    await self._fail(msg, "expired", "expired waiting to send")
                else:
                    await self._fail(msg, last.code, f"expired while retrying: {last.detail}")
                return
            except RelayRefused as exc:
                RELAY_ATTEMPTS.labels(exc.code).inc()
                if exc.slow_down:
                    self.breaker.failure()
                    self.pacer.hold(self.relay_id, self.settings.slow_down_seconds)
                elif exc.permanent and not exc.about_recipient:
                    # Refused for what we send or how (sender, authentication, content, policy):
                    # the next message will likely meet the same, so it counts against the relay.
                    self.breaker.failure()
                else:
                    # The relay is healthy; it judged this message, or this recipient (gone, a
                    # full mailbox): other customers' email must not wait behind that.
                    self.breaker.success()
                if exc.bounce:
                    await self._fail(msg, exc.code, "hard-bounce")
                    log.info("hard bounce", extra={"code": exc.code})
                    return
                if exc.permanent:
                    # Not the address's fault: the message fails, the address stays usable.
                    await self._fail(msg, exc.code, f"relay refused the message: {exc.detail}")
                    log.warning("relay refused the message", extra={"detail": exc.detail})
                    return
                last = exc
                continue
            except RelayUnavailable as exc:
                RELAY_ATTEMPTS.labels(exc.code).inc()
                self.breaker.failure()
                # e.g. "relay refused the credentials (535 ...)": the detail carries no secret.
                log.warning("relay unusable", extra={"code": exc.code, "detail": exc.detail})
                last = exc
                continue
            except RelayAmbiguous as exc:
                RELAY_ATTEMPTS.labels(exc.code).inc()
                self.breaker.failure()
                await self.ledger.set(msg.message_id, "unknown", error_code=exc.code)
                await self.status(msg, "unknown", error_code=exc.code, reason=exc.detail)
                return
            finally:
                # No verdict on the relay (the message was claimed elsewhere before MAIL FROM, a
                # ledger error, a cancellation): a half-open trial is handed back, or every
                # later email would wait for a verdict that never comes.
                self.breaker.release()
            await self._record_sent(msg.message_id, accepted.provider_id)
            await self.status(msg, "sent", provider_id=accepted.provider_id)
            return
        assert last is not None
        await self._fail(msg, last.code, f"retries exhausted: {last.detail}")

    async def _relay(
        self,
        msg: OutboundEmail,
        claim: str,
        recipient: str,
        data: bytes,
        *,
        key: str,
        fresh_until: float | None = None,
    ) -> Accepted:
        """One relay transaction, paced per relay, observed as the other senders' provider
        requests are (accepted, rejected, busy, timeout) from after the pacer's wait.

        The ledger row turns 'sending' only once a connection is ready and the pacer lets the
        message go, just before MAIL FROM: a crash while waiting for either leaves it 'queued'
        (nothing handed to the relay), so it is sent after a restart, not written off. When
        the message's deadline passed during those waits, nothing is sent (ExpiredWaiting).
        What the address unsubscribed from is read again after any wait (unless the read with
        the claim still stands, `fresh_until`), alongside the 'sending' mark: an unsubscribe
        that came meanwhile stops this very email (Unsubscribed).
        """
        message_id, deadline = msg.message_id, msg.deadline
        started = time.monotonic()

        async def pace() -> None:
            nonlocal started
            waited = (
                fresh_until is None
                or not self.pacer.ready(self.relay_id)
                or time.monotonic() > fresh_until
            )
            await self.pacer.acquire(self.relay_id)
            now = utc_now()
            began, withdrawn = await asyncio.gather(
                self.ledger.start_sending(message_id, claim=claim, now=now),
                self.ledger.unsubscribes(key) if waited else _nothing(),
            )
            if not began:
                raise ClaimLost(message_id)
            if deadline is not None and deadline <= now:
                # Checked once the row is ours again: no other consumer's outcome is touched.
                raise ExpiredWaiting(message_id)
            reason = self.unsubscribed(msg, withdrawn)
            if reason is not None:
                assert withdrawn is not None
                raise Unsubscribed(reason, withdrawn)
            started = time.monotonic()

        def observe(outcome: str, code: str) -> None:
            seconds = time.monotonic() - started
            observe_provider_request(sender=SENDER, outcome=outcome, code=code, seconds=seconds)

        try:
            accepted = await self.relay.send(
                sender=self.settings.from_address, recipient=recipient, data=data, pace=pace
            )
        except RelayRefused as exc:
            observe("rejected" if exc.permanent else "busy", exc.code)
            raise
        except RelayUnavailable as exc:
            observe("busy", exc.code)
            raise
        except RelayAmbiguous as exc:
            observe("timeout", exc.code)
            raise
        observe("accepted", "")
        return accepted

    async def _breaker_allows(self, msg: OutboundEmail) -> bool:
        """Wait while the relay's breaker is open; False when the message expires meanwhile."""
        while (wait := self.breaker.wait()) > 0:
            if self._expired(msg, after=wait):
                return False
            await self._sleep(wait)
        return True

    async def _record_sent(self, message_id: str, provider_id: str) -> None:
        # The relay has the message: losing this write would turn a sent message into an
        # 'unknown' one on redelivery, so insist a little before giving up.
        for delay in (0.2, 0.5, 1.0, 2.0):
            try:
                await self.ledger.set(message_id, "sent", provider_id=provider_id)
                return
            except PyMongoError:
                await asyncio.sleep(delay)
        await self.ledger.set(message_id, "sent", provider_id=provider_id)


async def _nothing() -> None:
    """No read: the one made with the claim stands (nothing was waited for since)."""
    return None
