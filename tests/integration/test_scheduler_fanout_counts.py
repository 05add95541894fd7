"""An audience fan-out's campaign stats count every request once, whatever write fails.

A chunk's checkpoint (the fire row) and its stats count (the campaign's counters) are two
documents, written one after the other. A fan-out stopped between them resumes past the chunk:
the resume must still count it, and must not count what was counted already.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect
from test_scheduler_support import open_publisher, publish_audience

from herald_kit import EventProducer
from herald_scheduler.adapters.audience import FireRepository
from herald_scheduler.adapters.campaigns import CampaignRepository
from herald_scheduler.adapters.stats import StatsRepository
from herald_scheduler.config import Settings
from herald_scheduler.domain.campaigns import CampaignIn, fire_key
from herald_scheduler.messaging.fanout import FanOut, fire_row
from herald_scheduler.messaging.matcher import campaign_ref

Client = AsyncMongoClient[dict[str, Any]]
AUDIENCE = [f"cust-{i:03d}" for i in range(30)]
CHUNK = 4  # 30 customers over 2 partitions: several chunks per partition


class _Faulty:
    """A collection whose writes fail once, after `after` writes that changed something:
    refused (`applied=False`), or applied by the database with the answer lost on the way
    back (`applied=True`)."""

    WRITES = ("bulk_write", "update_one")

    def __init__(self, real: Any, *, after: int, applied: bool) -> None:
        self.real, self.after, self.applied = real, after, applied
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        op = getattr(self.real, name)
        if name not in self.WRITES:
            return op

        async def write(*args: Any, **kwargs: Any) -> Any:
            due = not self.failed and self.after == 0
            if due and not self.applied:
                self.failed = True
                raise AutoReconnect("primary stepped down")
            result = await op(*args, **kwargs)
            if name == "bulk_write":
                changed = result.matched_count or result.upserted_count
            else:
                changed = result.matched_count or result.upserted_id is not None
            if changed and not self.failed:
                if due:
                    self.failed = True
                    raise AutoReconnect("connection closed")
                self.after -= 1
            return result

        return write


async def _fire(infra: dict[str, str], namespace: str, db: Any) -> tuple[Settings, str, str]:
    """An active audience campaign fired now over AUDIENCE: the settings, campaign and fire."""
    async with open_publisher(infra, namespace) as publisher:
        await publish_audience(publisher, AUDIENCE)
    settings = Settings(kafka_bootstrap=infra["kafka"], topic_namespace=namespace)
    now = datetime.now(UTC)
    campaigns = CampaignRepository(db)
    draft = CampaignIn.model_validate(
        {
            "name": "Reminder",
            "topic": "service-updates",
            "trigger": {"kind": "schedule", "cron": "0 9 * * mon", "time_zone": "UTC"},
            "messages": {"sms": {"en": {"body": "Hello."}}},
        }
    )
    doc = await campaigns.create(draft, now=now)
    doc = await campaigns.transition(doc["_id"], "activate", now=now)
    fanout = _fanout(settings, db, StatsRepository(db))
    row = fire_row(doc, campaign_ref(doc), now, fire_key(now), await fanout.audience_ends())
    assert await FireRepository(db).begin(row)
    return settings, doc["_id"], row["_id"]


def _fanout(
    settings: Settings, db: Any, stats: StatsRepository, fires: FireRepository | None = None
) -> FanOut:
    return FanOut(
        settings,
        fires or FireRepository(db),
        EventProducer(settings, source="scheduler"),  # only names the requests' topic
        batch=CHUNK,
        stats=stats,
    )


async def _resumed_counts(
    settings: Settings, db: Any, campaign_id: str, fire_id: str
) -> tuple[int, int]:
    """Resume the fire on another replica; its requests as counted by the fire and the stats."""
    published = await _fanout(settings, db, StatsRepository(db)).run(fire_id)
    assert published > 0  # the resume went on where the failed run stopped
    row = await FireRepository(db).get(fire_id)
    assert row is not None and row["done"] and row["outcome"] == "completed"
    stats = await StatsRepository(db).get(campaign_id)
    # Counted once each; the fire over, the names its counts were recorded under are gone.
    counters = await db["stats"].find_one({"_id": campaign_id})
    assert counters is not None and not counters.get("ops")
    return row["requested"], stats["requested"]


@pytest.mark.parametrize("applied", [False, True], ids=["refused", "answer lost"])
async def test_a_fan_out_stopped_by_a_failed_stats_write_counts_each_request_once(
    applied: bool,
    infra: dict[str, str],
    namespace: str,
    mongo: Client,
    db_name: Callable[[str], str],
) -> None:
    db = mongo[db_name("scheduler")]
    settings, cid, fire_id = await _fire(infra, namespace, db)
    stats = StatsRepository(db)
    # The third chunk's stats write fails after its checkpoint moved.
    stats._counts.rows = _Faulty(db["stats"], after=2, applied=applied)  # type: ignore[assignment]
    with pytest.raises(AutoReconnect):
        await _fanout(settings, db, stats).run(fire_id)

    assert await _resumed_counts(settings, db, cid, fire_id) == (len(AUDIENCE), len(AUDIENCE))


async def test_a_fan_out_whose_checkpoint_answer_was_lost_counts_each_request_once(
    infra: dict[str, str], namespace: str, mongo: Client, db_name: Callable[[str], str]
) -> None:
    db = mongo[db_name("scheduler")]
    settings, cid, fire_id = await _fire(infra, namespace, db)
    fires = FireRepository(db)
    # The third checkpoint moves, but its answer never arrives: the run stops before the
    # chunk's stats are written, and the resume starts past the chunk.
    fires.fires = _Faulty(db["fires"], after=2, applied=True)  # type: ignore[assignment]
    with pytest.raises(AutoReconnect):
        await _fanout(settings, db, StatsRepository(db), fires).run(fire_id)

    assert await _resumed_counts(settings, db, cid, fire_id) == (len(AUDIENCE), len(AUDIENCE))
