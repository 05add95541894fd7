"""Match case changes to event-triggered campaigns and request contacts."""

from __future__ import annotations

import logging

from aiokafka import ConsumerRecord

from herald_contracts import (
    CONTACT_REQUESTED,
    CampaignRef,
    CaseChanged,
    ContactRequest,
    utc_now,
)
from herald_kit import Doc, EventProducer, decode
from herald_scheduler.adapters.campaigns import CampaignRepository
from herald_scheduler.domain.campaigns import request_id
from herald_scheduler.domain.expressions import ExpressionError, evaluate

log = logging.getLogger("herald.scheduler.matcher")


def campaign_ref(doc: Doc) -> CampaignRef:
    """What a request carries of the campaign version it started with."""
    d = doc["definition"]
    return CampaignRef(
        id=doc["_id"],
        version=doc["version"],
        name=d["name"],
        topic=d["topic"],
        priority=d["priority"],
        messages=d["messages"],
        still_applies=d.get("still_applies"),
        max_attempts=d.get("max_attempts", 3),
    )


class Matcher:
    """One contact request per (campaign, case version, customer); a replay emits the same id."""

    def __init__(self, campaigns: CampaignRepository, producer: EventProducer) -> None:
        self.campaigns = campaigns
        self.producer = producer

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Consumer handler for cases.changes.v1."""
        change = decode(record, CaseChanged).data
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
            ref = campaign_ref(doc)
            trigger_key = f"{state.case_id}:{state.version}"
            for customer in state.customer_ids:
                rid = request_id(ref.id, trigger_key, customer)
                request = ContactRequest(
                    request_id=rid,
                    campaign=ref,
                    customer_id=customer,
                    case_id=state.case_id,
                    case_version=state.version,
                    case_state=state,
                    trigger_key=trigger_key,
                    requested_at=utc_now(),
                )
                await self.producer.publish(
                    CONTACT_REQUESTED, request, key=customer, event_id=rid, subject=state.case_id
                )
