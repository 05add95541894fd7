"""Audience fan-out into contact.requests.v1 beside the raw producer rate of the same broker.

The audience is seeded as preference snapshots on contacts.preferences.v1 (as the preferences
service publishes them); then one fire of an audience campaign streams it with a checkpoint
per batch, exactly as the leader replica does. The raw figure produces the same number of
messages of the same size with the same producer, in the same run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from pymongo import AsyncMongoClient

from benchlib import BenchEnv, Figure
from herald_contracts import (
    CONTACT_PREFERENCES,
    CampaignRef,
    ChannelAddress,
    Cleanup,
    ContactPreferences,
    ContactRequest,
    Topic,
    Topics,
)
from herald_kit import EventProducer, encode, ensure_topics
from herald_scheduler.adapters.audience import FireRepository
from herald_scheduler.config import Settings
from herald_scheduler.domain.campaigns import fire_key
from herald_scheduler.messaging.fanout import FanOut, RequestEncoder, fire_row

WINDOW = 5000  # produce futures in flight, as in bench_00_broker


async def _produce(producer: EventProducer, topic: str, items: object) -> float:
    futures = []
    n = 0
    t0 = time.perf_counter()
    for key, value, headers in items:  # type: ignore[attr-defined]
        futures.append(await producer.raw.send(topic, value, key=key, headers=headers))
        n += 1
        if len(futures) >= WINDOW:
            for f in futures:
                await f
            futures.clear()
    for f in futures:
        await f
    return n / (time.perf_counter() - t0)


async def bench(env: BenchEnv) -> list[Figure]:
    """Fan-out requests per second vs raw produce messages per second (target: >= 1/3)."""
    n = env.n(1_000_000)
    ns = await env.namespace()
    db_name = f"bench_fanout_{int(time.time())}"
    settings = Settings(kafka_bootstrap=env.kafka, topic_namespace=ns, mongo_db=db_name)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(env.mongo, tz_aware=True)
    db = client[db_name]
    producer = EventProducer(settings, source="scheduler")
    await producer.start()
    try:
        now = datetime.now(UTC)
        snapshot = ContactPreferences(
            customer_id="x",
            version=1,
            channels={"sms": ChannelAddress(address="+12015550100")},
            ranking=["sms"],
            consents={"reminders": {"sms": True}},
            updated_at=now,
        )
        p_headers, p_value = encode(CONTACT_PREFERENCES, snapshot, source="preferences")
        audience = Topics.CONTACTS_PREFERENCES.name(ns)
        seed_rate = await _produce(
            producer,
            audience,
            ((f"cust-{i:08d}".encode(), p_value, p_headers) for i in range(n)),
        )

        ref = CampaignRef(
            id="bench-campaign",
            version=1,
            name="Monday reminder",
            topic="reminders",
            messages={"sms": {"en": {"body": "Hello, your weekly reminder."}}},
        )
        key = fire_key(now)
        encoder = RequestEncoder(
            ContactRequest(
                request_id="-", campaign=ref, customer_id="-", trigger_key=key, requested_at=now
            ),
            source="scheduler",
        )
        headers, value = encoder.encode("0" * 36, "cust-00000000")
        raw = Topic(f"{ns}bench-fanout-raw", "customer id", Cleanup.DELETE, 3_600_000, partitions=6)
        await ensure_topics(env.kafka, topics=[raw])
        raw_rate = await _produce(
            producer, raw.base, ((f"c{i}".encode(), value, headers) for i in range(n))
        )

        fanout = FanOut(settings, FireRepository(db), producer, batch=settings.fanout_batch)
        doc = {"_id": ref.id, "definition": {"trigger": {}, "limits": {}, "timing": {}}}
        row = fire_row(doc, ref, now, key, await fanout.audience_ends())
        await FireRepository(db).begin(row)
        t0 = time.perf_counter()
        published = await fanout.run(row["_id"])
        fan_rate = published / (time.perf_counter() - t0)
    finally:
        await producer.stop()
        await client.drop_database(db_name)
        await client.close()
    note = f"{n:,} customers, {len(value)} B request, batch {settings.fanout_batch}"
    figures = [
        Figure("fanout", "audience seed (preference snapshots)", seed_rate, "msg/s", note),
        Figure("fanout", "raw produce, same broker, same run", raw_rate, "msg/s", note),
        Figure("fanout", "audience fan-out to contact.requests.v1", fan_rate, "req/s", note),
        Figure("fanout", "fan-out / raw produce", fan_rate / raw_rate, "ratio", "target >= 0.33"),
    ]
    if published != n:
        figures.append(Figure("fanout", "requests short of audience", n - published, "req"))
    return figures
