"""Delivery statuses arrive twice per message ("sent", then "delivered"): what each consumer
reads for them, on the real database. The later status of a contact must not cost the reads the
first one made, and the answers must stay those of a fresh read."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from herald_contracts import DeliveryStatus
from herald_dispatcher.adapters.store import Ledger
from herald_dispatcher.config import Settings as DispatcherSettings
from herald_dispatcher.policy import Dispatcher
from herald_scheduler.adapters.campaigns import CampaignRepository
from herald_scheduler.adapters.history import ContactHistory
from herald_scheduler.adapters.stats import StatsRepository
from herald_scheduler.domain.campaigns import CampaignIn

Doc = dict[str, Any]


class Finds(monitoring.CommandListener):
    """Counts find commands per collection (and inserts, in `inserts`)."""

    def __init__(self) -> None:
        self.by_collection: Counter[str] = Counter()
        self.inserts: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.by_collection[str(event.command["find"])] += 1
        elif event.command_name == "insert":
            self.inserts[str(event.command["insert"])] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def counted(
    infra: dict[str, str], db_name: Callable[[str], str]
) -> AsyncIterator[tuple[Any, Finds]]:
    finds = Finds()
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        infra["mongo"], tz_aware=True, event_listeners=[finds]
    )
    try:
        yield client[db_name("status_reads")], finds
    finally:
        await client.close()


async def test_a_contacts_later_statuses_are_noted_once_without_a_read(
    counted: tuple[Any, Finds],
) -> None:
    db, finds = counted
    history = ContactHistory(db)
    at = datetime.now(UTC)
    for _status in ("sent", "delivered"):
        await history.note(customer_id="c1", priority="service", request_id="r1", at=at)
    assert finds.by_collection["contact_history"] == 1  # the "delivered" did not read
    assert len((await history.sent_times(["c1"], "service"))["c1"]) == 1

    # Another replica (or this one after a restart) knows nothing in memory: it reads, and a
    # status of the same contact still adds nothing.
    other = ContactHistory(db)
    await other.note(customer_id="c1", priority="service", request_id="r1", at=at)
    assert len((await other.sent_times(["c1"], "service"))["c1"]) == 1
    # A new contact is added; forgetting the oldest noted contact only costs a read again.
    small = ContactHistory(db, remember=1)
    later = at + timedelta(minutes=5)
    await small.note(customer_id="c1", priority="service", request_id="r2", at=later)
    await small.note(customer_id="c2", priority="service", request_id="r3", at=later)
    before = finds.by_collection["contact_history"]
    await small.note(customer_id="c1", priority="service", request_id="r2", at=later)
    assert finds.by_collection["contact_history"] == before + 1
    times = await small.sent_times(["c1", "c2"], "service")
    assert (len(times["c1"]), len(times["c2"])) == (2, 1)


async def test_concurrent_customers_first_contacts_share_one_read(
    counted: tuple[Any, Finds],
) -> None:
    db, finds = counted
    history = ContactHistory(db)
    at = datetime.now(UTC)
    customers = [f"c{i}" for i in range(20)]
    await asyncio.gather(
        *(
            history.note(customer_id=c, priority="service", request_id=f"r-{c}", at=at)
            for c in customers
        )
    )
    assert finds.by_collection["contact_history"] == 1
    times = await history.sent_times(customers, "service")
    assert all(len(times[c]) == 1 for c in customers)


async def test_the_dispatcher_reads_an_attempt_only_for_statuses_that_decide_escalation(
    counted: tuple[Any, Finds],
) -> None:
    db, finds = counted
    ledger = Ledger(db)
    # A message whose campaign counts success as engagement: delivery only flags the request.
    await ledger.note_attempt(
        {"_id": "m1", "request_id": "r1", "attempt": 1, "success": "engaged", "next": None}
    )
    dispatcher = Dispatcher(None, None, ledger, None, DispatcherSettings())  # type: ignore[arg-type]

    def status(value: str) -> DeliveryStatus:
        return DeliveryStatus(
            message_id="m1",
            request_id="r1",
            campaign_id="c",
            customer_id="cust",
            channel="sms",
            status=value,
            at=datetime.now(UTC),
        )

    await dispatcher.on_status(status("sent"))
    assert finds.by_collection["attempts"] == 0
    assert await ledger.outcome("r1") == {}
    # Concurrent statuses of one poll share one read of their attempts.
    await asyncio.gather(*(dispatcher.on_status(status("delivered")) for _ in range(5)))
    assert finds.by_collection["attempts"] == 1
    assert (await ledger.outcome("r1")).get("delivered") is True


async def test_concurrent_matches_share_one_read_of_the_active_campaigns(
    counted: tuple[Any, Finds],
) -> None:
    db, finds = counted
    repo = CampaignRepository(db)
    now = datetime.now(UTC)
    draft = CampaignIn.model_validate(
        {
            "name": "Parcel delayed",
            "topic": "deliveries",
            "trigger": {"kind": "event", "event_types": ["case.updated"]},
            "messages": {"sms": {"en": {"body": "Your parcel is late."}}},
        }
    )
    doc = await repo.create(draft, now=now)
    await repo.transition(doc["_id"], "activate", now=now)
    before = finds.by_collection["campaigns"]
    answers = await asyncio.gather(*(repo.active_for("case.updated") for _ in range(8)))
    assert [[d["_id"] for d in a] for a in answers] == [[doc["_id"]]] * 8
    assert finds.by_collection["campaigns"] == before + 1
    # Nothing is kept once answered: a pause is seen by the next match.
    await repo.transition(doc["_id"], "pause", now=now)
    before = finds.by_collection["campaigns"]
    assert await repo.active_for("case.updated") == []
    assert finds.by_collection["campaigns"] == before + 1


class Published:
    """Records what the dispatcher publishes."""

    def __init__(self) -> None:
        self.timers: list[Any] = []

    async def publish(self, et: Any, data: Any, **_: Any) -> None:
        self.timers.append(data)


async def test_an_escalation_timer_is_cancelled_only_where_one_was_set(
    counted: tuple[Any, Finds],
) -> None:
    db, _ = counted
    ledger = Ledger(db)
    published = Published()
    dispatcher = Dispatcher(None, None, ledger, published, DispatcherSettings())  # type: ignore[arg-type]
    base = {"attempt": 1, "success": "delivered", "customer_id": "cust", "next": None}
    # The customer's only channel: no timer was set, so delivery cancels nothing.
    await ledger.note_attempt({"_id": "m1", "request_id": "r1", "timer": False, **base})
    # A row written before attempts said so: cancelled as before, to be safe.
    await ledger.note_attempt({"_id": "m2", "request_id": "r2", **base})
    # A timer waits on this one.
    await ledger.note_attempt({"_id": "m3", "request_id": "r3", "timer": True, **base})
    for mid, rid in (("m1", "r1"), ("m2", "r2"), ("m3", "r3")):
        status = DeliveryStatus(
            message_id=mid,
            request_id=rid,
            campaign_id="c",
            customer_id="cust",
            channel="sms",
            status="delivered",
            at=datetime.now(UTC),
        )
        await dispatcher.on_status(status)
    assert [(t.key, t.action) for t in published.timers] == [
        ("escalate:r2:1", "cancel"),
        ("escalate:r3:1", "cancel"),
    ]
    flags = [(await ledger.outcome(r)).get("delivered") for r in ("r1", "r2", "r3")]
    assert flags == [True, True, True]


async def test_a_messages_later_statuses_count_without_rewriting_its_campaign_row(
    counted: tuple[Any, Finds],
) -> None:
    db, finds = counted
    stats = StatsRepository(db)
    for status in ("sent", "delivered", "delivered"):  # the last one redelivered by the broker
        await stats.status(
            campaign_id="c1", message_id="m1", channel="sms", status=status, reason=None
        )
    assert finds.inserts["stats_messages"] == 1
    counters = await stats.get("c1")
    assert counters["channels"]["sms"] == {"sent": 1, "delivered": 1}
    # The row is there for replies: one to this message is counted as engagement.
    assert await stats.engaged(reply_id="re1", message_id="m1", intent="confirm")
    assert (await stats.get("c1"))["channels"]["sms"]["engaged"] == 1
