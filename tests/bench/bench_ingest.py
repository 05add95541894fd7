"""Ingest: events.inbound.v1 -> dedupe, projection, timeline -> cases.changes.v1 + cases.state.v1.

Two phases on the same broker and database, beside the raw single-hop consume+produce rate
measured in the same run (so the ratio means something on a noisy, shared machine):
- throughput: a backlog of case events is drained by a running ingest; events per second from
  the first to the last `cases.changes` record;
- latency: events produced at a steady rate below capacity; intake (the inbound record's
  timestamp) to the matching `cases.changes` record's timestamp, p50 and p99.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchlib import BenchEnv, Figure, percentile
from herald_contracts import INBOUND, CaseEventData, Topics
from herald_ingest.app import create_app
from herald_ingest.config import Settings
from herald_kit import encode

CASES = 1000


def _event(case_no: int, seq: int) -> tuple[bytes, list[tuple[str, bytes]], bytes]:
    case_id = f"case-{case_no:06d}"
    data = CaseEventData(
        case_id=case_id,
        customer_ids=[f"cust-{case_no:06d}"],
        sequence=seq,
        status=f"step {seq}",
        summary="Boiler repair",
        attributes={"seq": seq},
    )
    headers, value = encode(
        INBOUND["case.updated"],
        data,
        source="/bench/crm",
        event_id=f"{case_id}-{seq}",
        time=datetime.now(UTC),
    )
    return case_id.encode(), headers, value


async def _raw_relay(env: BenchEnv, ns: str, n: int) -> float:
    """The reference: consume and produce each record once, same broker, same settings."""
    producer = AIOKafkaProducer(
        bootstrap_servers=env.kafka, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    src, dst = Topics.EVENTS_INBOUND.name(ns), Topics.CASES_STATE.name(ns)
    try:
        futs = []
        for i in range(n):
            key, headers, value = _event(i % CASES, 10_000 + i)
            futs.append(await producer.send(src, value, key=key, headers=headers))
        await asyncio.gather(*futs)
        consumer = AIOKafkaConsumer(
            src,
            bootstrap_servers=env.kafka,
            group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            seen = 0
            t0 = time.perf_counter()
            while seen < n:
                got = await consumer.getmany(timeout_ms=1000, max_records=500)
                futs = []
                for records in got.values():
                    for r in records:
                        futs.append(
                            await producer.send(dst, r.value, key=r.key, headers=list(r.headers))
                        )
                    seen += len(records)
                await asyncio.gather(*futs)
                if got:
                    await consumer.commit()
            return n / (time.perf_counter() - t0)
        finally:
            await consumer.stop()
    finally:
        await producer.stop()


class ChangeWatcher:
    """Reads cases.changes.v1 and notes when each (case, version) appeared."""

    def __init__(self, env: BenchEnv, ns: str) -> None:
        self.consumer = AIOKafkaConsumer(
            Topics.CASES_CHANGES.name(ns),
            bootstrap_servers=env.kafka,
            group_id=f"bench-watch-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self.seen: dict[str, int] = {}  # ce_id "case:version" -> record timestamp (ms)

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def until(self, count: int, *, within: float) -> None:
        deadline = time.monotonic() + within
        while len(self.seen) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"saw {len(self.seen)} of {count} changes")
            got = await self.consumer.getmany(timeout_ms=500, max_records=5000)
            for records in got.values():
                for r in records:
                    ce_id = dict(r.headers)["ce_id"].decode()
                    self.seen[ce_id] = r.timestamp


async def bench(env: BenchEnv) -> list[Figure]:
    """Events/s through ingest and intake-to-cases.changes latency, beside the raw relay."""
    n = env.n(20_000)
    per_case = max(1, n // CASES)
    n = per_case * CASES
    raw_ns = await env.namespace()
    raw_rate = await _raw_relay(env, raw_ns, n)

    ns = await env.namespace()
    settings = Settings(
        kafka_bootstrap=env.kafka,
        mongo_uri=env.mongo,
        mongo_db=f"bench_ingest_{uuid.uuid4().hex[:8]}",
        topic_namespace=ns,
        log_level="WARNING",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=env.kafka, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    topic = Topics.EVENTS_INBOUND.name(ns)
    watcher = ChangeWatcher(env, ns)
    await watcher.start()
    try:
        # Phase 1: a backlog, drained by a freshly started ingest.
        futs = []
        for seq in range(per_case):
            for c in range(CASES):
                key, headers, value = _event(c, seq)
                futs.append(await producer.send(topic, value, key=key, headers=headers))
        await asyncio.gather(*futs)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            t0 = time.time()
            await watcher.until(n, within=600)
            stamps = sorted(watcher.seen.values())
            drain_rate = n / max(0.001, (stamps[-1] / 1000) - t0)

            # Phase 2: a steady stream at about half the drained rate; latency per event.
            rate = max(10.0, min(drain_rate * 0.5, 5_000.0))
            m = env.n(10_000)
            sent: dict[str, int] = {}
            start = time.monotonic()
            futs = []
            for i in range(m):
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                c, seq = i % CASES, per_case + i // CASES
                key, headers, value = _event(c, seq)
                futs.append(await producer.send(topic, value, key=key, headers=headers))
                # Every event moves its case one version on: version = seq + 1.
                sent[f"case-{c:06d}:{seq + 1}"] = 0
            metas = await asyncio.gather(*futs)
            for ce_id, meta in zip(sent, metas, strict=True):
                sent[ce_id] = meta.timestamp
            await watcher.until(n + m, within=600)
            latencies = [watcher.seen[k] - ts for k, ts in sent.items()]
    finally:
        await watcher.stop()
        await producer.stop()
    note = f"{n:,} events over {CASES:,} cases; batch {settings.consumer_batch}; 6 partitions"
    return [
        Figure("ingest", "raw consume+produce (single hop)", raw_rate, "msg/s", f"{n:,} msgs"),
        Figure("ingest", "ingest events -> cases.changes", drain_rate, "events/s", note),
        Figure("ingest", "ingest / raw relay", drain_rate / raw_rate * 100, "%", ""),
        Figure(
            "ingest",
            "intake -> cases.changes p50",
            percentile(latencies, 50),
            "ms",
            f"{m:,} events at {rate:,.0f}/s",
        ),
        Figure("ingest", "intake -> cases.changes p99", percentile(latencies, 99), "ms", ""),
    ]
