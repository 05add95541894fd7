"""Bulk import of contacts through the preferences API into FerretDB, with the ledger copy and
every snapshot published to contacts.preferences.v1 (acks=all) before each request answers."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

from benchlib import BenchEnv, Figure
from herald_preferences.app import create_app
from herald_preferences.config import Settings
from support import api_keys, running

CHUNK = 2_000
CONCURRENCY = 3


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


async def bench(env: BenchEnv) -> list[Figure]:
    """Rows per second for an NDJSON import of 100,000 contacts in requests of 2,000 rows."""
    n = env.n(100_000)
    run = uuid.uuid4().hex[:6]
    settings = Settings(
        kafka_bootstrap=env.kafka,
        mongo_uri=env.mongo,
        mongo_db=f"bench_preferences_{run}",
        topic_namespace=await env.namespace(),
        api_keys=api_keys(),
        link_secret="bench",
    )
    bodies = [
        "\n".join(_row(i, run) for i in range(start, min(n, start + CHUNK)))
        for start in range(0, n, CHUNK)
    ]
    accepted = 0
    queue = list(reversed(bodies))
    async with running(create_app(settings)) as api:

        async def worker() -> None:
            nonlocal accepted
            while queue:
                r = await api.post(
                    "/v1/contacts/import",
                    content=queue.pop(),
                    headers={"Content-Type": "application/x-ndjson"},
                    timeout=300,
                )
                r.raise_for_status()
                accepted += r.json()["accepted"]

        t0 = time.perf_counter()
        # An importer keeps a few requests in flight so parsing overlaps database and broker I/O.
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - t0
    load = os.getloadavg()[0]
    note = (
        f"{accepted:,} of {n:,} rows, {CHUNK:,} rows/request x{CONCURRENCY}, "
        f"FerretDB+Kafka, load avg {load:.1f} on {os.cpu_count()} cores"
    )
    return [Figure("preferences", "bulk import (NDJSON, API)", accepted / elapsed, "rows/s", note)]
