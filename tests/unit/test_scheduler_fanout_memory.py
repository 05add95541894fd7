"""A scheduled fire with an audience filter streams its audience: the fan-out's memory grows by
a customer id and an offset per customer of a partition, never by the customers' snapshots (a
million customers' snapshots would not fit the scheduler pod).

The compacted contacts topic and the fan-out's producer are stand-ins here, so what is measured
(tracemalloc's peak of the fan-out's own allocations) holds nothing but the fan-out's.
"""

from __future__ import annotations

import asyncio
import gc
import pickle
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from herald_contracts import CampaignRef, ContactPreferences, MessageTemplate
from herald_kit import EventProducer
from herald_scheduler.config import Settings
from herald_scheduler.messaging import fanout
from herald_scheduler.messaging.fanout import FanOut, partition_members

ENGLISH = 'contact.locale == "en"'
# Per customer of a partition: a customer id, an offset and their dict slot (~0.13 KB measured);
# a snapshot held per customer is ~0.8 KB more.
BOUND_PER_CUSTOMER = 200

Record = tuple[bytes, bytes | None]  # (customer id, snapshot; None: a tombstone)


def _snapshot(customer: str, locale: str) -> bytes:
    """A customer's preference snapshot as the preferences service publishes it (~0.7 KB)."""
    return (
        ContactPreferences(
            customer_id=customer,
            version=1,
            channels={
                "sms": {"address": "+447900000001"},
                "email": {"address": "customer@example.com"},
                "voice": {"address": "+447900000001"},
            },
            ranking=["sms", "email", "voice"],
            consents={
                t: {"sms": True, "email": True, "voice": False}
                for t in ("billing", "reminders", "repairs")
            },
            locale=locale,
            time_zone="Europe/London",
            quiet_hours={"start": "21:00", "end": "08:00"},
            updated_at=datetime(2026, 1, 12, tzinfo=UTC),
        )
        .model_dump_json()
        .encode()
    )


class _Topic:
    """contacts.preferences.v1 in memory, read as the broker serves it: each fetch makes its
    records afresh, so only what the fan-out keeps of them stays."""

    def __init__(self, name: str, partitions: dict[int, tuple[int, Callable[[int], Record]]]):
        self.name = name
        self.partitions = partitions  # partition: (record count, the record at an offset)

    def fetch(self, p: int, start: int, limit: int) -> list[ConsumerRecord[bytes, bytes]]:
        size, record = self.partitions[p]
        records = []
        for off in range(start, min(start + limit, size)):
            key, value = record(off)
            records.append(
                ConsumerRecord(
                    self.name, p, off, 0, 0, key, value, None, len(key), len(value or b""), ()
                )
            )
        return records


class _Consumer:
    """The reading consumer's calls the fan-out makes, over a _Topic."""

    def __init__(self, topic: _Topic) -> None:
        self.topic = topic
        self.positions: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = dict.fromkeys(tps, 0)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(
        self, tp: TopicPartition, *, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        records = self.topic.fetch(tp.partition, self.positions[tp], max_records)
        if records:
            self.positions[tp] = records[-1].offset + 1
        return {tp: records} if records else {}


class _Batch:
    def __init__(self) -> None:
        self.keys: list[bytes] = []

    def append(self, *, timestamp: None, key: bytes, value: bytes, headers: Any) -> bool:
        self.keys.append(key)
        return True

    def record_count(self) -> int:
        return len(self.keys)


class _Producer:
    """The fan-out's own producer: acknowledges at once, and keeps the customers it was sent
    only when asked to (a test of memory must not hold them)."""

    def __init__(self, partitions: int, *, keep: bool) -> None:
        self.partitions = partitions
        self.keep = keep
        self.sent: list[tuple[int, str]] = []
        self.count = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        self.count += batch.record_count()
        if self.keep:
            self.sent.extend((partition, key.decode()) for key in batch.keys)
        return self._acked()

    async def send(self, topic: str, value: bytes, *, key: bytes, headers: Any) -> Any:
        self.count += 1
        if self.keep:
            self.sent.append((-1, key.decode()))
        return self._acked()

    @staticmethod
    def _acked() -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class _Fires:
    """One fire row: its checkpoint moved by the fan-out as the database would."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row

    async def get(self, fire_id: str) -> dict[str, Any]:
        return dict(self.row)

    async def advance(
        self,
        fire_id: str,
        *,
        old: tuple[int, int],
        new: tuple[int, int],
        count: int,
        audience_errors: int = 0,
        stats: Any = None,
    ) -> bool:
        assert (self.row["cp_part"], self.row["cp_off"]) == old
        self.row.update(cp_part=new[0], cp_off=new[1], requested=self.row["requested"] + count)
        self.row["audience_errors"] = self.row.get("audience_errors", 0) + audience_errors
        return True

    async def finish(self, fire_id: str, *, now: datetime, outcome: str = "completed") -> None:
        self.row.update(done=True, outcome=outcome)


class _FanOut(FanOut):
    def __init__(self, topic: _Topic, fires: _Fires, *, batch: int) -> None:
        settings = Settings(topic_namespace="unit.")
        producer = EventProducer(settings, source="scheduler")  # only names the requests' topic
        super().__init__(settings, fires, producer, batch=batch)  # type: ignore[arg-type]
        self.source = topic

    def _consumer(self) -> Any:
        return _Consumer(self.source)


def _row(
    audience: str | None, ends: dict[int, int], cp: tuple[int, int] = (0, 0)
) -> dict[str, Any]:
    campaign = CampaignRef(
        id="c1", version=1, name="Reminder", topic="reminders", max_attempts=1,
        messages={"sms": {"en": MessageTemplate(body="Hello.")}},
    )  # fmt: skip
    return {
        "_id": "c1|fire:2026-01-12T09:00:00Z",
        "campaign": campaign.model_dump(mode="json"),
        "trigger_key": "fire:2026-01-12T09:00:00Z",
        "scheduled_at": datetime(2026, 1, 12, 9, tzinfo=UTC),
        "audience": audience,
        "ends": {str(p): end for p, end in ends.items()},
        "done": False,
        "cp_part": cp[0],
        "cp_off": cp[1],
        "requested": 0,
    }


async def _fire(
    topic: _Topic,
    row: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    *,
    keep: bool,
    batch: int,
) -> tuple[_Fires, _Producer]:
    producer = _Producer(len(topic.partitions), keep=keep)
    monkeypatch.setattr(fanout, "request_producer", lambda settings: producer)
    fires = _Fires(row)
    await _FanOut(topic, fires, batch=batch).run(row["_id"])
    return fires, producer


def _audience(n: int) -> _Topic:
    """n customers on one partition, one snapshot each, every other one English."""
    english, dutch = _snapshot("{}", "en"), _snapshot("{}", "nl")

    def record(off: int) -> Record:
        customer = f"cust-{off:08d}".encode()
        return customer, (english if off % 2 else dutch).replace(b"{}", customer)

    return _Topic("unit.contacts.preferences.v1", {0: (n, record)})


def _english(expression: str, variables: dict[str, Any]) -> bool:
    """ENGLISH without CEL: it keeps nothing between customers, and traced, it would take most
    of the test's time."""
    assert expression == ENGLISH
    return bool(variables["contact"]["locale"] == "en")


async def _peak(n: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """The fan-out's peak traced memory over a fire with a filter on n customers."""
    monkeypatch.setattr(fanout, "evaluate", _english)
    topic = _audience(n)
    row = _row(ENGLISH, {0: n})
    gc.collect()
    tracemalloc.start()
    try:
        fires, producer = await _fire(topic, row, monkeypatch, keep=False, batch=500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fires.row["outcome"] == "completed"
    assert producer.count == fires.row["requested"] == n // 2
    return peak


async def test_a_filtered_fire_grows_by_an_id_and_an_offset_per_customer_not_a_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _peak(100, monkeypatch)  # the filter compiled, the encoders' first use
    small, large = await _peak(1_000, monkeypatch), await _peak(10_000, monkeypatch)
    per_customer = (large - small) / 9_000
    assert per_customer < BOUND_PER_CUSTOMER, f"{per_customer:.0f} B per customer"


async def test_the_read_ahead_worker_hands_back_no_snapshot() -> None:
    # What the worker returns is pickled to the service and held there while it is published.
    n = 2_000
    consumer = _Consumer(_audience(n))
    tp = TopicPartition("unit.contacts.preferences.v1", 0)
    members = await partition_members(consumer, tp, 0, n, keep=True, batch=500)
    assert len(members) == n
    assert len(pickle.dumps(members)) < 16 * n


# One partition with older snapshots and a tombstone, one with a record past the fire's pin.
HISTORY: dict[int, list[tuple[str, str | None]]] = {
    0: [
        ("a", "en"),
        ("b", "en"),
        ("c", "en"),
        ("a", "nl"),  # a is Dutch now
        ("c", None),  # c erased
        ("d", "en"),
        ("e", "nl"),
        ("b", "en"),  # b again, still English
    ],
    1: [("f", "en"), ("g", "nl"), ("h", "en"), ("f", "nl")],  # f's last record is past the pin
}
ENDS = {0: 8, 1: 3}


def _history() -> _Topic:
    def reader(records: list[tuple[str, str | None]]) -> Callable[[int], Record]:
        def record(off: int) -> Record:
            customer, locale = records[off]
            return customer.encode(), None if locale is None else _snapshot(customer, locale)

        return record

    return _Topic(
        "unit.contacts.preferences.v1",
        {p: (len(records), reader(records)) for p, records in HISTORY.items()},
    )


@pytest.mark.parametrize(
    ("audience", "cp", "expected"),
    [
        (ENGLISH, (0, 0), ["d", "b", "f", "h"]),
        (ENGLISH, (0, 6), ["b", "f", "h"]),  # resumed after d's chunk
        (None, (0, 0), ["a", "d", "e", "b", "f", "g", "h"]),
        (None, (1, 1), ["g", "h"]),
    ],
    ids=["filter", "filter resumed", "no filter", "no filter resumed"],
)
@pytest.mark.parametrize("batch", [1, 2, 500])
async def test_a_fire_contacts_each_customer_by_their_latest_snapshot_as_of_its_pins(
    audience: str | None,
    cp: tuple[int, int],
    expected: list[str],
    batch: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fires, producer = await _fire(
        _history(), _row(audience, ENDS, cp), monkeypatch, keep=True, batch=batch
    )
    assert [customer for _, customer in producer.sent] == expected
    assert fires.row["outcome"] == "completed"
    assert (fires.row["cp_part"], fires.row["cp_off"]) == (2, 0)
    assert fires.row["requested"] == len(expected)


class _Cleaned(_Topic):
    """One partition whose log cleaner runs once, just after the fan-out's first read reached
    the fire's pin: the records at `cleaned` are gone from then on."""

    def __init__(self, records: list[tuple[str, str | None]], pin: int, cleaned: set[int]):
        super().__init__(
            "unit.contacts.preferences.v1", {0: (len(records), lambda off: (b"", b""))}
        )
        self.records = records
        self.pin = pin
        self.cleaned = cleaned
        self.removed: set[int] = set()

    def fetch(self, p: int, start: int, limit: int) -> list[ConsumerRecord[bytes, bytes]]:
        offsets = [o for o in range(start, len(self.records)) if o not in self.removed][:limit]
        records = []
        for off in offsets:
            customer, locale = self.records[off]
            value = None if locale is None else _snapshot(customer, locale)
            records.append(
                ConsumerRecord(self.name, p, off, 0, 0, customer.encode(), value, None, 1, 1, ())
            )
        if self.pin - 1 in offsets:
            self.removed = self.cleaned
        return records


@pytest.mark.parametrize("batch", [1, 2, 500])
async def test_a_member_whose_snapshot_is_compacted_away_mid_fire_is_not_lost(
    batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a, b, c and e were in the audience as of the pin (5); each but c wrote again after it,
    # so the cleaner drops their records below the pin between the fan-out's two reads.
    records: list[tuple[str, str | None]] = [
        ("a", "en"),
        ("b", "en"),
        ("c", "en"),
        ("d", "nl"),
        ("e", "en"),
        ("a", "en"),  # past the pin: a is still English
        ("b", "nl"),  # b is Dutch now: judged on that, not contacted
        ("e", None),  # e erased, and the tombstone gone too: nothing left of e
    ]
    topic = _Cleaned(records, pin=5, cleaned={0, 1, 4, 7})
    fires, producer = await _fire(topic, _row(ENGLISH, {0: 5}), monkeypatch, keep=True, batch=batch)
    assert [customer for _, customer in producer.sent] == ["c", "a"]
    assert fires.row["requested"] == 2
    assert fires.row["audience_errors"] == 1  # e: counted, not silently dropped
    assert fires.row["outcome"] == "completed"
    assert (fires.row["cp_part"], fires.row["cp_off"]) == (1, 0)
