"""Audience fan-out into contact.requests.v1 beside the raw producer rate of the same broker.

The audience is seeded as preference snapshots on contacts.preferences.v1 (as the preferences
service publishes them); then one fire of an active audience campaign streams it exactly as the
leader replica does: FanOut built as the service builds it (campaign stats counted per
checkpoint, the campaign's status read before every chunk), reading the compacted topic,
publishing, checkpointing in the database.

The raw figure is like-for-like: the fan-out's own producer (`request_producer`: idempotent,
acks=all, linger 5 ms, 512 KB record batches), records of the same key and value sizes as the
fan-out's requests, sent the way the fan-out sends them (whole record batches per partition,
chunks of `fanout_batch` records, at most two unacknowledged while the next is built) to a topic
with as many partitions as contact.requests.v1 — only the reading, encoding and checkpointing are
left out.

A second, smaller fire with an audience filter (a second pass reads each customer's snapshot
for it) gives the fan-out's memory: the peak of the service process's allocations over the
fire (tracemalloc, which slows it, so no rate is taken from it). Below the read-ahead threshold
the service reads both passes itself, so the peak holds its first pass too.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient

from benchlib import BenchEnv, Figure, settle
from herald_contracts import (
    CONTACT_PREFERENCES,
    ChannelAddress,
    Cleanup,
    ContactPreferences,
    ContactRequest,
    Topic,
    Topics,
)
from herald_kit import EventProducer, encode, ensure_topics
from herald_scheduler.adapters.audience import FireRepository
from herald_scheduler.adapters.campaigns import CampaignRepository
from herald_scheduler.adapters.stats import StatsRepository
from herald_scheduler.config import Settings
from herald_scheduler.domain.campaigns import CampaignIn, fire_key, request_id
from herald_scheduler.messaging.fanout import FanOut, RequestEncoder, fire_row, request_producer
from herald_scheduler.messaging.matcher import campaign_ref

WINDOW = 5000  # produce futures in flight while seeding, as in bench_00_broker
PARTITIONS = 6  # every topic of the bench namespace, and the raw topic
FILTERED = 100_000  # customers of the fire with an audience filter (CEL: ~6,000 a second)
FILTER = 'contact.locale == "en"'  # every seeded customer, each one evaluated


def _customer(i: int) -> str:
    return f"cust-{i:08d}"


def _snapshot() -> tuple[list[tuple[str, bytes]], bytes]:
    """Every customer's preference snapshot (headers and value)."""
    snapshot = ContactPreferences(
        customer_id="x",
        version=1,
        channels={"sms": ChannelAddress(address="+12015550100")},
        ranking=["sms"],
        consents={"reminders": {"sms": True}},
        updated_at=datetime.now(UTC),
    )
    return encode(CONTACT_PREFERENCES, snapshot, source="preferences")


async def _seed(producer: EventProducer, topic: str, n: int) -> float:
    """The audience: one preference snapshot per customer (set-up, not the measured path)."""
    headers, value = _snapshot()
    futures = []
    t0 = time.perf_counter()
    for i in range(n):
        futures.append(
            await producer.raw.send(topic, value, key=_customer(i).encode(), headers=headers)
        )
        if len(futures) >= WINDOW:
            await asyncio.gather(*futures)
            futures.clear()
    await asyncio.gather(*futures)
    return n / (time.perf_counter() - t0)


async def _raw(
    producer: AIOKafkaProducer,
    topic: str,
    n: int,
    chunk: int,
    record: Any,
) -> float:
    """The fan-out's send path without its reading, encoding and checkpoints."""

    async def send_chunk(p: int, ids: range) -> list[Any]:
        futures: list[Any] = []
        batch = producer.create_batch()
        for i in ids:
            key, value, headers = record(i)
            if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                futures.append(await producer.send_batch(batch, topic, partition=p))
                batch = producer.create_batch()
                batch.append(timestamp=None, key=key, value=value, headers=headers)
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=p))
        return futures

    t0 = time.perf_counter()
    waiting: list[list[Any]] = []
    for p in range(PARTITIONS):
        members = range(p, n, PARTITIONS)  # a partition's share of the audience, in order
        for start in range(0, len(members), chunk):
            waiting.append(await send_chunk(p, members[start : start + chunk]))
            if len(waiting) > 2:  # as the fan-out: at most two chunks unacknowledged
                await asyncio.gather(*waiting.pop(0))
    for futures in waiting:
        await asyncio.gather(*futures)
    return n / (time.perf_counter() - t0)


async def _campaign(
    campaigns: CampaignRepository, now: datetime, audience: str | None = None
) -> dict[str, Any]:
    """An active audience campaign, stored as the API stores it."""
    await campaigns.ensure_indexes()
    trigger = {"kind": "schedule", "cron": "0 9 * * mon", "time_zone": "UTC"}
    draft = CampaignIn.model_validate(
        {
            "name": "Monday reminder",
            "topic": "reminders",
            "trigger": {**trigger, "audience": audience} if audience else trigger,
            "messages": {"sms": {"en": {"body": "Hello, your weekly reminder."}}},
        }
    )
    doc = await campaigns.create(draft, now=now)
    return await campaigns.transition(doc["_id"], "activate", now=now)


async def _filtered(env: BenchEnv) -> list[Figure]:
    """One fire with an audience filter over a fresh audience: its peak traced memory."""
    n = env.n(FILTERED)
    ns = await env.namespace(partitions=PARTITIONS)
    db_name = f"bench_fanout_filter_{int(time.time())}"
    settings = Settings(kafka_bootstrap=env.kafka, topic_namespace=ns, mongo_db=db_name)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(env.mongo, tz_aware=True)
    db = client[db_name]
    producer = EventProducer(settings, source="scheduler")
    await producer.start()
    try:
        await _seed(producer, Topics.CONTACTS_PREFERENCES.name(ns), n)
        now = datetime.now(UTC)
        doc = await _campaign(CampaignRepository(db), now, FILTER)
        fires = FireRepository(db)
        await fires.ensure_indexes()
        fanout = FanOut(
            settings,
            fires,
            producer,
            batch=settings.fanout_batch,
            stats=StatsRepository(db),
            read_ahead_records=settings.fanout_read_ahead_records,
        )
        row = fire_row(doc, campaign_ref(doc), now, fire_key(now), await fanout.audience_ends())
        await fires.begin(row)
        await settle()
        gc.collect()
        tracemalloc.start()
        try:
            published = await fanout.run(row["_id"])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await producer.stop()
        await client.drop_database(db_name)
        await client.close()
    note = (
        f"{n:,} customers, {len(_snapshot()[1])} B snapshot, filter {FILTER}, chunk "
        f"{settings.fanout_batch}, {PARTITIONS} partitions; service process, tracemalloc"
    )
    figures = [
        Figure("fanout", "fan-out with audience filter: peak memory", peak / 1e6, "MB", note),
        Figure(
            "fanout",
            "fan-out with audience filter: peak per customer",
            peak / n,
            "B",
            "the peak over the customers, its fixed part (the fetch buffers) included",
        ),
    ]
    if published != n:
        figures.append(
            Figure("fanout", "filtered requests short of audience", n - published, "req")
        )
    return figures


async def bench(env: BenchEnv) -> list[Figure]:
    """Fan-out requests per second vs raw produce messages per second (target: >= 1/3)."""
    n = env.n(1_000_000)
    ns = await env.namespace(partitions=PARTITIONS)
    db_name = f"bench_fanout_{int(time.time())}"
    settings = Settings(kafka_bootstrap=env.kafka, topic_namespace=ns, mongo_db=db_name)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(env.mongo, tz_aware=True)
    db = client[db_name]
    producer = EventProducer(settings, source="scheduler")
    await producer.start()
    raw_producer = request_producer(settings)
    await raw_producer.start()
    try:
        # Created first, so its partitions have leaders long before the raw figure is taken.
        raw = Topic(
            f"{ns}bench-fanout-raw", "customer id", Cleanup.DELETE, 3_600_000, partitions=PARTITIONS
        )
        await ensure_topics(env.kafka, topics=[raw])
        seed_rate = await _seed(producer, Topics.CONTACTS_PREFERENCES.name(ns), n)

        # An active audience campaign, stored as the API stores it.
        now = datetime.now(UTC)
        campaigns = CampaignRepository(db)
        doc = await _campaign(campaigns, now)
        ref = campaign_ref(doc)
        key = fire_key(now)

        # Raw: records the size of this fire's requests (same key format, same request body).
        encoder = RequestEncoder(
            ContactRequest(
                request_id="-", campaign=ref, customer_id="-", trigger_key=key, requested_at=now
            ),
            source="scheduler",
        )
        sample = _customer(0)
        await settle()
        headers, value = encoder.encode(request_id(ref.id, key, sample), sample)
        raw_rate = await _raw(
            raw_producer,
            raw.base,
            n,
            settings.fanout_batch,
            lambda i: (_customer(i).encode(), value, headers),
        )

        async def status(campaign_id: str) -> str:
            current: str = (await campaigns.get(campaign_id))["status"]
            return current

        fires = FireRepository(db)
        await fires.ensure_indexes()
        fanout = FanOut(
            settings,
            fires,
            producer,
            batch=settings.fanout_batch,
            stats=StatsRepository(db),
            status=status,
            read_ahead_records=settings.fanout_read_ahead_records,
        )
        row = fire_row(doc, ref, now, key, await fanout.audience_ends())
        await fires.begin(row)
        await settle()
        t0 = time.perf_counter()
        published = await fanout.run(row["_id"])
        fan_rate = published / (time.perf_counter() - t0)
        counted = (await StatsRepository(db).get(ref.id))["requested"]
    finally:
        await raw_producer.stop()
        await producer.stop()
        await client.drop_database(db_name)
        await client.close()
    note = (
        f"{n:,} customers, {len(value)} B request, chunk {settings.fanout_batch}, "
        f"{PARTITIONS} partitions"
    )
    figures = [
        Figure("fanout", "audience seed (preference snapshots)", seed_rate, "msg/s", note),
        Figure("fanout", "raw produce, fan-out's producer and batching", raw_rate, "msg/s", note),
        Figure("fanout", "audience fan-out to contact.requests.v1", fan_rate, "req/s", note),
        Figure("fanout", "fan-out / raw produce", fan_rate / raw_rate, "ratio", "target >= 0.33"),
    ]
    if published != n:
        figures.append(Figure("fanout", "requests short of audience", n - published, "req"))
    if counted != published:
        figures.append(Figure("fanout", "stats requested != published", counted, "req"))
    return figures + await _filtered(env)
