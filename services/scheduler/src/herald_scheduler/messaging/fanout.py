"""Audience fan-out: stream the contact view in batches, publish requests, checkpoint each batch.

A crash between a batch's publish and its checkpoint re-publishes that batch with the same
request ids (derived from campaign, fire time and customer), which the dispatcher drops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any

from herald_contracts import CONTACT_REQUESTED, CampaignRef, ContactRequest, Topics, utc_now
from herald_kit import Doc, EventProducer, encode
from herald_scheduler.adapters.audience import ContactView, FireRepository
from herald_scheduler.domain.campaigns import request_id
from herald_scheduler.domain.expressions import ExpressionError, evaluate
from herald_scheduler.metrics import REQUESTS

log = logging.getLogger("herald.scheduler.fanout")


class RequestEncoder:
    """Encodes one fire's requests fast: the envelope and body are built once, then only the
    request id and customer change (the fan-out of a large audience is bound by this)."""

    def __init__(self, template: ContactRequest, *, source: str) -> None:
        headers, _ = encode(CONTACT_REQUESTED, template, source=source, event_id="-")
        self._headers = [(k, v) for k, v in headers if k != "ce_id"]
        self._body = template.model_dump(mode="json", exclude={"request_id", "customer_id"})

    def encode(self, rid: str, customer_id: str) -> tuple[list[tuple[str, bytes]], bytes]:
        """Headers and value of one request."""
        body = {"request_id": rid, "customer_id": customer_id, **self._body}
        return [("ce_id", rid.encode()), *self._headers], json.dumps(body).encode()


class FanOut:
    """Runs one fire's fan-out to completion, resuming from its checkpoint."""

    def __init__(
        self,
        contacts: ContactView,
        fires: FireRepository,
        producer: EventProducer,
        *,
        batch: int,
    ) -> None:
        self.contacts = contacts
        self.fires = fires
        self.producer = producer
        self.batch = batch

    async def run(self, fire_id: str) -> int:
        """Publish the rest of a fire's audience; how many requests this call published."""
        fire = await self.fires.get(fire_id)
        if fire is None or fire["done"]:
            return 0
        ref = CampaignRef.model_validate(fire["campaign"])
        scheduled: datetime = fire["scheduled_at"]
        expires = fire.get("expires_after_seconds")
        template = ContactRequest(
            request_id="-",
            campaign=ref,
            customer_id="-",
            trigger_key=fire["trigger_key"],
            requested_at=utc_now(),
            expires_at=scheduled + timedelta(seconds=expires) if expires else None,
        )
        encoder = RequestEncoder(template, source="scheduler")
        topic = self.producer.topic_name(Topics.CONTACT_REQUESTS)
        audience: str | None = fire.get("audience")
        rate: float | None = fire.get("rate_per_second")
        checkpoint: str = fire["checkpoint"]
        published = 0
        started = time.monotonic()
        while True:
            rows = await self.contacts.page(after=checkpoint, limit=self.batch)
            if not rows:
                break
            futures: list[Any] = []
            for row in rows:
                if audience and not _matches(audience, row["p"]):
                    continue
                rid = request_id(ref.id, fire["trigger_key"], row["_id"])
                headers, value = encoder.encode(rid, row["_id"])
                futures.append(
                    await self.producer.raw.send(
                        topic, value, key=row["_id"].encode(), headers=headers
                    )
                )
            # Durable on the broker before the checkpoint moves past them.
            await asyncio.gather(*futures)
            new = rows[-1]["_id"]
            if not await self.fires.advance(fire_id, old=checkpoint, new=new, count=len(futures)):
                log.warning("fan-out checkpoint moved by another worker", extra={"fire": fire_id})
                return published
            checkpoint = new
            published += len(futures)
            REQUESTS.labels("schedule").inc(len(futures))
            if rate:
                # Pace the campaign: sleep until the published count fits the rate.
                ahead = published / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await self.fires.finish(fire_id, now=utc_now())
        log.info("fan-out done", extra={"fire": fire_id, "published": published})
        return published


def _matches(audience: str, prefs: dict[str, Any]) -> bool:
    try:
        return evaluate(audience, {"contact": prefs})
    except ExpressionError:
        return False


def fire_row(doc: Doc, ref: CampaignRef, scheduled: datetime, trigger_key: str) -> Doc:
    """A fire row for a campaign version at a scheduled time."""
    d = doc["definition"]
    return {
        "_id": f"{doc['_id']}|{trigger_key}",
        "campaign_id": doc["_id"],
        "campaign": ref.model_dump(mode="json"),
        "trigger_key": trigger_key,
        "scheduled_at": scheduled,
        "audience": d["trigger"].get("audience"),
        "rate_per_second": d.get("limits", {}).get("rate_per_second"),
        "expires_after_seconds": d.get("timing", {}).get("expires_after_seconds"),
        "done": False,
        "created_at": utc_now(),
    }
