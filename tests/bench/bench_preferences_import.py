"""Preferences figures on FerretDB + Kafka:

- bulk import of contacts through the API (ledger copy and every snapshot published, acks=all,
  before each request answers), in rows per second;
- STOP-to-snapshot latency: from producing a STOP on engagement.replies.v1 to the withdrawn
  consent appearing on contacts.preferences.v1 (what the dispatcher's local view reads), at a
  small contact count and again after the whole import.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchlib import BenchEnv, Figure, percentile
from herald_contracts import ENGAGEMENT_REPLY, ContactPreferences, EngagementReply, Topics
from herald_kit import decode, encode
from herald_preferences.app import create_app
from herald_preferences.config import Settings
from support import api_keys, running

CHUNK = 2_000
CONCURRENCY = 3
WARM = 1_000


def _row(i: int, run: str) -> str:
    return json.dumps(
        {
            "customer_id": f"{run}-{i:07d}",
            "channels": {"sms": f"+1201555{i % 10_000:04d}", "email": f"c{i}@example.com"},
            "ranking": ["sms", "email"],
            "consents": {"service-updates": {"sms": True, "email": True}},
            "locale": "en-GB" if i % 2 else "zh-CN",
            "time_zone": "Europe/London" if i % 2 else "Asia/Shanghai",
            "quiet_hours": {"start": "21:00", "end": "08:00"},
        }
    )


async def _import(api: object, bodies: list[str]) -> int:
    accepted = 0
    queue = list(reversed(bodies))

    async def worker() -> None:
        nonlocal accepted
        while queue:
            r = await api.post(  # type: ignore[attr-defined]
                "/v1/contacts/import",
                content=queue.pop(),
                headers={"Content-Type": "application/x-ndjson"},
                timeout=600,
            )
            r.raise_for_status()
            accepted += r.json()["accepted"]

    # An importer keeps a few requests in flight so parsing overlaps database and broker I/O.
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return accepted


async def _stop_latency(kafka: str, namespace: str, customers: list[str]) -> list[float]:
    """Seconds from producing each STOP to seeing its snapshot, one STOP at a time."""
    reader = AIOKafkaConsumer(
        Topics.CONTACTS_PREFERENCES.name(namespace),
        bootstrap_servers=kafka,
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="latest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await reader.start()
    await producer.start()
    out: list[float] = []
    try:
        while not reader.assignment():
            await reader.getmany(timeout_ms=200)
        for tp in reader.assignment():
            await reader.seek_to_end(tp)
        for cid in customers:
            reply = EngagementReply(
                reply_id=uuid.uuid4().hex,
                customer_id=cid,
                channel="sms",
                intent="stop",
                text="STOP",
                at=datetime.now(UTC),
            )
            headers, value = encode(ENGAGEMENT_REPLY, reply, source="bench")
            t0 = time.perf_counter()
            await producer.send_and_wait(
                Topics.ENGAGEMENT_REPLIES.name(namespace), value, key=cid.encode(), headers=headers
            )
            seen = False
            while not seen and time.perf_counter() - t0 < 120:
                for recs in (await reader.getmany(timeout_ms=50)).values():
                    for r in recs:
                        if r.key == cid.encode() and r.value is not None:
                            snap = decode(r, ContactPreferences).data
                            seen = seen or snap.consents["service-updates"]["sms"] is False
            out.append(time.perf_counter() - t0 if seen else float("inf"))
    finally:
        await producer.stop()
        await reader.stop()
    return out


async def bench(env: BenchEnv) -> list[Figure]:
    """Import n contacts (warm-up slice first), measuring STOP latency before and after."""
    n = env.n(100_000)
    run = uuid.uuid4().hex[:6]
    namespace = await env.namespace()
    settings = Settings(
        kafka_bootstrap=env.kafka,
        mongo_uri=env.mongo,
        mongo_db=f"bench_preferences_{run}",
        topic_namespace=namespace,
        api_keys=api_keys(),
        link_secret="bench",
    )
    rows = [_row(i, run) for i in range(n)]
    warm = min(WARM, n)
    chunks = [rows[:warm]] + [rows[s : s + CHUNK] for s in range(warm, n, CHUNK)]
    bodies = ["\n".join(c) for c in chunks]
    async with running(create_app(settings)) as api:
        t0 = time.perf_counter()
        accepted = await _import(api, bodies[:1])
        elapsed = time.perf_counter() - t0
        small = await _stop_latency(env.kafka, namespace, [f"{run}-{i:07d}" for i in range(10)])
        t0 = time.perf_counter()
        accepted += await _import(api, bodies[1:])
        elapsed += time.perf_counter() - t0
        large = await _stop_latency(env.kafka, namespace, [f"{run}-{i:07d}" for i in range(10, 13)])
    load = os.getloadavg()[0]
    note = (
        f"{accepted:,} of {n:,} rows, {CHUNK:,} rows/request x{CONCURRENCY}, "
        f"load avg {load:.1f} on {os.cpu_count()} cores"
    )
    return [
        Figure("preferences", "bulk import (NDJSON, API)", accepted / elapsed, "rows/s", note),
        Figure(
            "preferences",
            f"STOP to snapshot p50, {warm:,} contacts",
            percentile(small, 50) * 1000,
            "ms",
            f"max {max(small) * 1000:,.0f} ms over {len(small)}",
        ),
        Figure(
            "preferences",
            f"STOP to snapshot p50, {accepted:,} contacts",
            percentile(large, 50) * 1000,
            "ms",
            f"max {max(large) * 1000:,.0f} ms over {len(large)}",
        ),
    ]
