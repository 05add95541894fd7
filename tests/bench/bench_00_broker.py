"""Raw broker figures on the same broker, measured in the same run: the reference for ratios."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchlib import BenchEnv, Figure
from herald_contracts import Cleanup, Topic
from herald_kit import ensure_topics

PAYLOAD = b'{"case_id": "case-000000", "status": "engineer booked for 14:00", "v": 1}' * 4


async def bench(env: BenchEnv) -> list[Figure]:
    """Single-hop produce, consume, and consume+produce messages per second."""
    n = env.n(100_000)
    src = Topic(f"bench-raw-{time.time_ns()}", "k", Cleanup.DELETE, 3_600_000, partitions=6)
    dst = Topic(f"bench-raw-out-{time.time_ns()}", "k", Cleanup.DELETE, 3_600_000, partitions=6)
    await ensure_topics(env.kafka, topics=[src, dst])
    producer = AIOKafkaProducer(
        bootstrap_servers=env.kafka, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        t0 = time.perf_counter()
        batch = []
        for i in range(n):
            batch.append(await producer.send(src.base, PAYLOAD, key=f"c{i % 1000}".encode()))
            if len(batch) >= 5000:
                for fut in batch:
                    await fut
                batch.clear()
        for fut in batch:
            await fut
        produce_rate = n / (time.perf_counter() - t0)

        consumer = AIOKafkaConsumer(
            src.base,
            bootstrap_servers=env.kafka,
            group_id=f"bench-{time.time_ns()}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_poll_records=2000,
        )
        await consumer.start()
        seen = 0
        t0 = time.perf_counter()
        while seen < n:
            got = await consumer.getmany(timeout_ms=1000, max_records=2000)
            seen += sum(len(v) for v in got.values())
        consume_rate = n / (time.perf_counter() - t0)
        await consumer.stop()

        consumer = AIOKafkaConsumer(
            src.base,
            bootstrap_servers=env.kafka,
            group_id=f"bench-{time.time_ns()}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_poll_records=2000,
        )
        await consumer.start()
        seen = 0
        t0 = time.perf_counter()
        while seen < n:
            got = await consumer.getmany(timeout_ms=1000, max_records=2000)
            futs = []
            for records in got.values():
                for r in records:
                    futs.append(await producer.send(dst.base, r.value, key=r.key))
                seen += len(records)
            for fut in futs:
                await fut
            if got:
                await consumer.commit()
        relay_rate = n / (time.perf_counter() - t0)
        await consumer.stop()
    finally:
        await producer.stop()
    note = f"{n:,} msgs of {len(PAYLOAD)} B, idempotent acks=all"
    return [
        Figure("broker", "raw produce", produce_rate, "msg/s", note),
        Figure("broker", "raw consume", consume_rate, "msg/s", note),
        Figure("broker", "raw consume+produce (single hop)", relay_rate, "msg/s", note),
    ]
