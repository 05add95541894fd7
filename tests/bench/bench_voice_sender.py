"""voice-sender against the sandbox: calls placed per second with pacing off, and pacing accuracy.

Modelled on bench_sms_sender: the sandbox and the sender run as their own processes (as `make run`
starts them), calls are published first so the sender drains a backlog, and rates are measured
at the provider, from the sandbox's acceptance times of the first and last call. The sandbox
plays every call as Twilio would (it fetches the TwiML from the sender), so that load is part of
the figure; status callbacks are off.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer

from benchlib import BenchEnv, Figure
from herald_contracts import OUTBOUND_VOICE, OutboundVoice, utc_now
from herald_devstack import BY_NAME, Stack, StackConfig
from herald_kit import encode

NAME = "voice_sender"


async def _publish(env: BenchEnv, ns: str, n: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=env.kafka, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        now = utc_now()
        futures = []
        for i in range(n):
            msg = OutboundVoice(
                message_id=f"bench-{uuid.uuid4().hex}",
                request_id=f"req-{i}",
                campaign_id="bench",
                customer_id=f"cust-{i % 2000}",
                to=f"+1201555{i % 10_000:04d}",
                say=f"Your engineer is booked for 14:00, reference {i}.",
                language="en-GB",
                created_at=now,
                expires_at=now + timedelta(hours=1),
            )
            headers, value = encode(OUTBOUND_VOICE, msg, source="bench")
            futures.append(
                await producer.send(
                    OUTBOUND_VOICE.topic.name(ns),
                    value,
                    key=msg.customer_id.encode(),
                    headers=headers,
                )
            )
        for fut in futures:
            await fut
    finally:
        await producer.stop()


async def _run(env: BenchEnv, n: int, extra: dict[str, str]) -> tuple[float, int]:
    """Publish n calls, start the sandbox and a sender; (calls accepted per second, 429s)."""
    ns = await env.namespace(partitions=6)
    stack = Stack(
        StackConfig(
            kafka_bootstrap=env.kafka,
            mongo_uri=env.mongo,
            namespace=ns,
            db_suffix="_" + ns.strip("."),
            port_offset=random.randrange(12_000, 17_000, 10),
            log_dir=Path(".cache/logs/bench"),
            extra_env={
                "HERALD_SANDBOX_TWILIO_CALLBACKS": "false",
                "HERALD_SANDBOX_CALLBACK_DELAY_SECONDS": "0",
                "HERALD_SANDBOX_LOG_LEVEL": "WARNING",
                "HERALD_VOICE_SENDER_LOG_LEVEL": "WARNING",
                "HERALD_VOICE_SENDER_CONSUMER_BATCH": "1000",
                **extra,
            },
        ),
        services=[BY_NAME["sandbox"], BY_NAME["voice-sender"]],
    )
    await _publish(env, ns, n)
    try:
        stack.config.log_dir.mkdir(parents=True, exist_ok=True)
        stack.start_one("sandbox")
        stack.start_one("voice-sender")
        await asyncio.to_thread(stack.wait_ready, 90)
        sandbox = stack.url("sandbox")
        async with httpx.AsyncClient(timeout=60) as http:
            deadline = time.monotonic() + 600
            items: list[dict[str, object]] = []
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                items = (await http.get(f"{sandbox}/sandbox/api/calls")).json()["items"]
                if len(items) >= n:
                    break
            rejected = int(
                (await http.get(f"{sandbox}/sandbox/api/twilio/behaviour")).json()["rejected_429"]
            )
        times = sorted(float(i["accepted_at"]) for i in items)  # type: ignore[arg-type]
        if len(times) < 2:
            return 0.0, rejected
        return (len(times) - 1) / (times[-1] - times[0]), rejected
    finally:
        stack.stop()


async def bench(env: BenchEnv) -> list[Figure]:
    """Throughput with pacing off; achieved / configured rate with pacing on."""
    n = env.n(2000)
    rate, _ = await _run(
        env,
        n,
        {"HERALD_VOICE_SENDER_RATE_PER_SECOND": "0", "HERALD_VOICE_SENDER_CONCURRENCY": "64"},
    )
    figures = [Figure(NAME, "calls/s, one sender process, pacing off", rate, "call/s", f"n={n}")]
    configured = 5.0  # a caller id's pace is low in practice (the default is 1/s)
    m = env.n(250)
    achieved, rejected = await _run(
        env,
        m,
        {
            "HERALD_VOICE_SENDER_RATE_PER_SECOND": str(configured),
            "HERALD_SANDBOX_TWILIO_RATE_PER_NUMBER": str(configured),
        },
    )
    figures.append(
        Figure(
            NAME,
            f"pacing accuracy at {configured:.0f}/s (achieved / configured)",
            100 * achieved / configured,
            "%",
            f"n={m}, {rejected} x 429 from the provider, target 98-102 %",
        )
    )
    return figures
