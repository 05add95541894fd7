"""Match case changes to event-triggered campaigns and request contacts."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from aiokafka import ConsumerRecord

from herald_contracts import (
    CONTACT_REQUESTED,
    CampaignRef,
    CaseChanged,
    ContactRequest,
    utc_now,
)
from herald_kit import Doc, EventProducer, current_traceparent, decode
from herald_scheduler.adapters.campaigns import CampaignRepository
from herald_scheduler.adapters.pacing import SendPace
from herald_scheduler.adapters.stats import StatsRepository
from herald_scheduler.adapters.timers import TimerRepository
from herald_scheduler.domain.campaigns import Timing, definition_of, request_id
from herald_scheduler.domain.expressions import ExpressionError, evaluate
from herald_scheduler.metrics import REQUESTS

log = logging.getLogger("herald.scheduler.matcher")


def campaign_ref(doc: Doc) -> CampaignRef:
    """What a request carries of the campaign version it started with."""
    d = definition_of(doc)
    return CampaignRef(
        id=doc["_id"],
        version=doc["version"],
        name=d.name,
        topic=d.topic,
        priority=d.priority,
        messages=d.messages,
        still_applies=d.still_applies,
        max_attempts=d.max_attempts,
        success=d.escalation.success,
        escalate_after_seconds=d.escalation.escalate_after_seconds,
        cap_policy=d.limits.cap_policy,
        counts_towards_cap=d.limits.counts_towards_cap,
        critical=d.critical,
    )


def expiry(doc: Doc, triggered_at: datetime) -> datetime | None:
    """When a contact triggered at `triggered_at` may no longer be sent."""
    seconds = doc["definition"].get("timing", {}).get("expires_after_seconds")
    return triggered_at + timedelta(seconds=seconds) if seconds else None


class Matcher:
    """One contact request per (campaign, case version, customer); a replay emits the same id."""

    def __init__(
        self,
        campaigns: CampaignRepository,
        timers: TimerRepository,
        producer: EventProducer,
        stats: StatsRepository,
        pace: SendPace,
    ) -> None:
        self.campaigns = campaigns
        self.timers = timers
        self.producer = producer
        self.stats = stats
        self.pace = pace
        # Validating a stored definition parses its templates; do it once per version.
        self._refs: dict[tuple[str, int], tuple[CampaignRef, Timing, float | None]] = {}

    def _compiled(self, doc: Doc) -> tuple[CampaignRef, Timing, float | None]:
        key = (doc["_id"], doc["version"])
        got = self._refs.get(key)
        if got is None:
            if len(self._refs) > 1000:
                self._refs.clear()
            d = definition_of(doc)
            got = self._refs[key] = (campaign_ref(doc), d.timing, d.limits.rate_per_second)
        return got

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Consumer handler for cases.changes.v1."""
        change = decode(record, CaseChanged).data
        if change.late:
            # The event is older than news the case already had (say, a booking that arrives
            # after the case was resolved): announcing it now would send stale news.
            log.info(
                "late change triggers no campaign",
                extra={"case_id": change.state.case_id, "event_type": change.event.type},
            )
            return
        state = change.state
        variables = {
            "event": change.event.model_dump(mode="json"),
            "case": state.model_dump(mode="json"),
        }
        for doc in await self.campaigns.active_for(change.event.type):
            flt = doc["definition"]["trigger"].get("filter")
            if flt:
                try:
                    if not evaluate(flt, variables):
                        continue
                except ExpressionError as exc:
                    log.warning(
                        "campaign filter failed", extra={"campaign": doc["_id"], "error": str(exc)}
                    )
                    continue
            ref, timing, rate = self._compiled(doc)
            now = utc_now()
            trigger_key = f"{state.case_id}:{state.version}"
            for customer in state.customer_ids:
                rid = request_id(ref.id, trigger_key, customer)
                due = now + timedelta(seconds=timing.wait_seconds)
                request = ContactRequest(
                    request_id=rid,
                    campaign=ref,
                    customer_id=customer,
                    case_id=state.case_id,
                    case_version=state.version,
                    case_state=state,
                    trigger_key=trigger_key,
                    requested_at=now,
                    not_before=due if due > now else None,
                    expires_at=expiry(doc, now),
                )
                if timing.coalesce_seconds:
                    # One row per (campaign, case, customer) holds the window and the latest
                    # version; it fires once when the window closes.
                    window = f"coalesce:{ref.id}:{state.case_id}:{customer}"
                    outcome = await self.timers.coalesce(
                        key=window,
                        case_version=state.version,
                        due_at=due,
                        request=request.model_dump(mode="json"),
                        now=now,
                        traceparent=current_traceparent(),
                    )
                    if rate and outcome in ("opened", "reopened"):
                        # A window that closes is one request: it takes one slot of the pace.
                        slot = await self.pace.reserve(ref.id, rate, due)
                        if slot > due:
                            await self.timers.postpone(
                                window, case_version=state.version, due_at=slot
                            )
                    continue
                timer_id = f"delay:{rid}"
                if rate:
                    # Paced: every request waits for its slot in a durable row (a replayed
                    # change finds the row and takes no second slot).
                    if await self.timers.get(timer_id) is not None:
                        continue
                    due = await self.pace.reserve(ref.id, rate, due)
                if due > now or rate:
                    await self.timers.schedule(
                        timer_id=timer_id,
                        key=f"case:{ref.id}:{state.case_id}:{customer}",
                        due_at=due,
                        request=request.model_copy(update={"not_before": due}).model_dump(
                            mode="json"
                        ),
                        now=now,
                        kind="delay",
                        traceparent=current_traceparent(),
                    )
                else:
                    await self.producer.publish(
                        CONTACT_REQUESTED,
                        request,
                        key=customer,
                        event_id=rid,
                        subject=state.case_id,
                    )
                    REQUESTS.labels("event").inc()
                    await self.stats.requested(ref.id, [rid])
