"""Durable timers: take schedule/cancel requests from timers.requests.v1, fire due rows."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from aiokafka import ConsumerRecord

from herald_contracts import (
    CONTACT_REQUESTED,
    DELIVERY_STATUS,
    ENGAGEMENT_REPLY,
    ContactRequest,
    DeliveryStatus,
    EngagementReply,
    SuppressionReason,
    TimerRequest,
    utc_now,
)
from herald_kit import (
    INFRA_ERRORS,
    REPLAY_WINDOW,
    Doc,
    EventProducer,
    NotFound,
    PermanentError,
    cancel_and_wait,
    continued,
    decode,
    is_permanent_kafka_error,
    is_transient_db_error,
    validate_own,
)
from herald_scheduler.adapters.pacing import SendPace
from herald_scheduler.adapters.stats import StatsRepository
from herald_scheduler.adapters.timers import TimerRepository
from herald_scheduler.domain.campaigns import definition_of
from herald_scheduler.metrics import REQUESTS, TIMERS_DUE, TIMERS_FIRED

log = logging.getLogger("herald.scheduler.timers")

# The dispatcher's namespace for ids derived from a request (herald_dispatcher.policy): an
# expiry noted here and one the dispatcher notes for the same request are the same event.
MESSAGE_NAMESPACE = uuid.UUID("2b0f3c55-0d7e-4c2b-8a39-5b1f6e2d7c90")


# Failed attempts to fire one row before it is settled `failed`: each comes a lease (30 s) after
# the last, so a row that cannot be fired (a request this version cannot read, a record the
# broker refuses) is given up within minutes instead of being retried for ever. An outage is not
# the row's failure and is not counted (see `_outage`).
MAX_FIRE_ATTEMPTS = 5


def _outage(exc: BaseException) -> bool:
    """True when the broker or the database failed, not the row: retried for as long as it lasts,
    as a consumer retries (herald_kit.ConsumerLoop)."""
    if is_transient_db_error(exc):
        return True
    return isinstance(exc, INFRA_ERRORS) and not is_permanent_kafka_error(exc)


def suppressed_id(request_id: str) -> str:
    """The id of a request's `suppressed` status, as the dispatcher derives it."""
    return str(uuid.uuid5(MESSAGE_NAMESPACE, f"{request_id}|suppressed"))


def _expired(request: ContactRequest) -> bool:
    return request.expires_at is not None and request.expires_at <= utc_now()


class TimerService:
    """Consumer handler for timer requests, and the poller that fires due timers."""

    def __init__(
        self,
        timers: TimerRepository,
        producer: EventProducer,
        stats: StatsRepository,
        *,
        poll_seconds: float,
        lease_seconds: float,
        retention: timedelta = REPLAY_WINDOW,
        campaign: Callable[[str], Awaitable[Doc]] | None = None,
        pace: SendPace | None = None,
        hold_seconds: float = 60,
        status_ttl_seconds: float = 5,
    ) -> None:
        self.retention = retention
        self.campaign = campaign
        self.pace = pace
        self.hold = timedelta(seconds=hold_seconds)
        self.status_ttl = status_ttl_seconds
        # Campaign id -> ((status, send rate), monotonic time it is good until): a batch of due
        # rows of one campaign reads the campaign once.
        self._statuses: dict[str, tuple[tuple[str | None, float | None], float]] = {}
        self.timers = timers
        self.producer = producer
        self.stats = stats
        self.poll_seconds = poll_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self._task: asyncio.Task[None] | None = None

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """timers.requests.v1: schedule a timer (idempotent by timer id) or cancel by key."""
        event = decode(record, TimerRequest)
        req = event.data
        # Kept on the row, so what fires later goes on in the trace that asked for it.
        traceparent = event.trace.header() if event.trace is not None else None
        now = utc_now()
        if req.action == "cancel":
            await self.timers.cancel(req.key, now=now)
            return
        if req.due_at is None:
            raise PermanentError("a scheduled timer needs due_at", field="due_at")
        if req.reply is not None:
            # A deferred call-back (voice-sender): the reply is re-published when due.
            await self.timers.schedule(
                timer_id=req.timer_id,
                key=req.key,
                due_at=req.due_at,
                request=None,
                reply=req.reply.model_dump(mode="json"),
                now=now,
                traceparent=traceparent,
            )
            return
        if req.request is None:
            raise PermanentError("a scheduled timer needs the request to re-send", field="request")
        await self.timers.schedule(
            timer_id=req.timer_id,
            key=req.key,
            due_at=req.due_at,
            request=req.request.model_dump(mode="json"),
            now=now,
            traceparent=traceparent,
        )

    def start(self) -> None:
        """Start polling for due timers."""
        self._task = asyncio.create_task(self._run(), name="timers")

    async def stop(self) -> None:
        """Stop polling; a claimed row is fired again by any replica after its lease."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        housekeeping = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                fired = await self.fire_due()
                if loop.time() >= housekeeping:
                    # Every minute: the due-but-unfired gauge, and settled rows are swept once
                    # no record can ask for them again (a timer is requested before it is due).
                    housekeeping = loop.time() + 60
                    now = utc_now()
                    TIMERS_DUE.set(await self.timers.due_count(now=now))
                    await self.timers.sweep(before=now - self.retention)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer poll failed")
                fired = 0
            if not fired:
                await asyncio.sleep(self.poll_seconds)

    async def fire_due(self, limit: int = 500) -> int:
        """Fire up to `limit` due timers; how many were settled.

        Each row fires in the trace it was scheduled in (a row kept without one, in a trace of
        its own), so its records and log lines follow the contact that asked for it.
        """
        settled = 0
        for timer_id in await self.timers.due(now=utc_now(), limit=limit):
            row = await self.timers.claim(timer_id, now=utc_now(), lease=self.lease)
            if row is None:
                continue  # another replica took it, or it was cancelled meanwhile
            with continued(row.get("traceparent")):
                try:
                    settled += await self._fire(row)
                except Exception as exc:
                    if _outage(exc):
                        # The poll ends; the row is fired again after its lease, like one whose
                        # replica died mid-fire.
                        raise
                    settled += await self._failed(row, exc)
        return settled

    async def _failed(self, row: Doc, exc: Exception) -> int:
        """A row whose firing failed on its own account: counted on the row and fired again
        after its lease, until `MAX_FIRE_ATTEMPTS` failed; then settled `failed` (logged by id,
        kind and error type, never the request, and counted in herald_scheduler_timers_total,
        which HeraldTimersFailing watches). 1 when it was settled."""
        error = type(exc).__name__
        kind = "callback" if row.get("reply") is not None else str(row["kind"])
        about = {"timer_id": row["_id"], "kind": kind, "error": error}
        attempts = await self.timers.failed_attempt(row, error=error)
        if attempts is None:
            return 0  # cancelled, moved or joined meanwhile: it is fired (or not) as it is now
        if attempts < MAX_FIRE_ATTEMPTS:
            log.warning(
                "timer could not be fired; tried again", extra={**about, "attempt": attempts}
            )
            return 0
        ok = await self.timers.settle(row, "failed", now=utc_now())
        TIMERS_FIRED.labels(kind, "failed" if ok else "superseded").inc()
        if ok:
            log.error("timer failed for good; not fired", extra={**about, "attempts": attempts})
        return 1

    async def _fire(self, row: Doc) -> int:
        """Fire (or close, or hold) one claimed row; 1 when it was settled."""
        if row.get("reply") is not None:
            return await self._fire_reply(row)
        request = validate_own(ContactRequest, row["request"], kind="timers.request")
        status, rate = await self._campaign_gate(request.campaign.id)
        if status == "archived":
            # An archived campaign contacts nobody more: the row is closed unsent. A
            # dispatcher's deferral of a contact's own request was counted as requested, so
            # it ends as suppressed (`campaign-archived`) in the stats; the scheduler's own
            # rows were never counted and, like the rest of a fan-out halted by an archive,
            # end quietly.
            if row["kind"] == "timer":
                await self._publish_suppressed(request, "campaign-archived", utc_now())
            ok = await self.timers.settle(row, "cancelled", now=utc_now())
            TIMERS_FIRED.labels(row["kind"], "cancelled" if ok else "superseded").inc()
            return 1
        if status == "paused" and not _expired(request):
            # Held, not sent: re-checked after a while, so a resume sends it (and an expiry
            # that passes meanwhile closes it as it would have without the pause).
            await self.timers.hold(row, until=utc_now() + self.hold)
            return 0
        if row.get("held") and rate and self.pace is not None:
            # Resumed: the rows the pause held all come due within one hold, so each takes
            # a new slot of the campaign's pace instead of going out in one burst.
            slot = await self.pace.reserve(request.campaign.id, rate, utc_now())
            if slot > utc_now():
                await self.timers.hold(row, until=slot, held=False)
                return 0
        if row["kind"] == "coalesce":
            # The window's close (moved later by the campaign's send pace), not the time of
            # the last change that joined it.
            request = request.model_copy(update={"not_before": row["due_at"]})
        now = utc_now()
        if request.expires_at is not None and request.expires_at <= now:
            # Never send after the expiry: the row is closed without a request, and the
            # contact ends as suppressed (expired) in the campaign's stats.
            await self._publish_expired(request, row["kind"], now)
            outcome = "expired"
        else:
            # A dispatcher timer re-sends its request unchanged; its event id is the timer's
            # own, so a retry and the original request stay distinguishable.
            event_id = row["_id"] if row["kind"] == "timer" else request.request_id
            await self.producer.publish(
                CONTACT_REQUESTED,
                request,
                key=request.customer_id,
                event_id=event_id,
                subject=request.case_id,
            )
            REQUESTS.labels(row["kind"]).inc()
            if row["kind"] != "timer":
                # A dispatcher timer re-sends a request already counted; the others are new.
                await self.stats.requested(request.campaign.id, [request.request_id])
            outcome = "fired"
        ok = await self.timers.settle(row, outcome, now=now)
        TIMERS_FIRED.labels(row["kind"], outcome if ok else "superseded").inc()
        return 1

    async def _campaign_gate(self, campaign_id: str) -> tuple[str | None, float | None]:
        """The campaign's status and send rate, read at most every few seconds; (None, None)
        when there is nothing to check (no lookup wired, or a campaign this database does not
        hold)."""
        if self.campaign is None:
            return None, None
        clock = time.monotonic()
        cached = self._statuses.get(campaign_id)
        if cached is not None and cached[1] > clock:
            return cached[0]
        try:
            doc = await self.campaign(campaign_id)
            gate = (doc["status"], definition_of(doc).limits.rate_per_second)
        except NotFound:
            gate = (None, None)
        if len(self._statuses) > 10_000:
            self._statuses.clear()
        self._statuses[campaign_id] = (gate, clock + self.status_ttl)
        return gate

    async def _publish_expired(self, request: ContactRequest, kind: str, now: datetime) -> None:
        """A contact's own request (not an escalation, at any attempt) expired while it waited
        here: it ends as suppressed."""
        if not request.first_contact:
            return
        if kind != "timer":
            # The scheduler's own delayed request was never published, so never counted as
            # requested: count it now, so its suppression has a request to end.
            await self.stats.requested(request.campaign.id, [request.request_id])
        await self._publish_suppressed(request, "expired", now)

    async def _publish_suppressed(
        self, request: ContactRequest, reason: SuppressionReason, now: datetime
    ) -> None:
        """Tell delivery.status.v1 that a contact ended while it waited here (it expired, or
        its campaign was archived), as the dispatcher does for one it suppresses: only for a
        contact's own request (an escalation follows a contact that was made), under an id
        derived from the request, so a second firing of the row publishes the same event."""
        if not request.first_contact:
            return
        sid = suppressed_id(request.request_id)
        status = DeliveryStatus(
            message_id=sid,
            request_id=request.request_id,
            campaign_id=request.campaign.id,
            customer_id=request.customer_id,
            case_id=request.case_id,
            status="suppressed",
            reason=reason,
            at=now,
        )
        await self.producer.publish(
            DELIVERY_STATUS, status, key=request.customer_id, event_id=sid, subject=request.case_id
        )

    async def _fire_reply(self, row: dict[str, object]) -> int:
        """A deferred call-back: re-publish its reply under the reply's own event id (to every
        consumer a redelivery, which they already handle idempotently), unless its window
        closed."""
        reply = validate_own(EngagementReply, row["reply"], kind="timers.reply")
        now = utc_now()
        if reply.callback_until is not None and reply.callback_until <= now:
            outcome = "expired"
        else:
            await self.producer.publish(
                ENGAGEMENT_REPLY,
                reply,
                key=reply.customer_id,
                event_id=reply.reply_id,
                subject=reply.case_id,
            )
            outcome = "fired"
        ok = await self.timers.settle(row, outcome, now=now)
        TIMERS_FIRED.labels("callback", outcome if ok else "superseded").inc()
        return 1
