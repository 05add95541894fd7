"""What the Twilio-side sender benchmarks share: publish a backlog of outbound messages, start
the sandbox and one sender as their own processes (as `make run` starts them), and measure the
rate at the provider, from the sandbox's acceptance times of the first and last message."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from benchlib import BenchEnv, Figure
from herald_contracts import EventType
from herald_devstack import BY_NAME, Stack, StackConfig
from herald_kit import encode


async def publish_backlog(
    env: BenchEnv, ns: str, et: EventType, make: Callable[[int], BaseModel], n: int
) -> None:
    """n messages made by `make(i)` onto the event type's topic, keyed by customer."""
    producer = AIOKafkaProducer(
        bootstrap_servers=env.kafka, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        futures = []
        for i in range(n):
            msg = make(i)
            headers, value = encode(et, msg, source="bench")
            key = str(getattr(msg, "customer_id")).encode()  # noqa: B009 (any outbound model)
            futures.append(await producer.send(et.topic.name(ns), value, key=key, headers=headers))
        for fut in futures:
            await fut
    finally:
        await producer.stop()


async def provider_rate(
    env: BenchEnv,
    *,
    service: str,
    listing: str,
    et: EventType,
    make: Callable[[int], BaseModel],
    n: int,
    extra: dict[str, str],
) -> tuple[float, int]:
    """Publish n messages, start the sandbox and `service`; (accepted per second at the
    provider, 429 answers), reading the sandbox's `listing` (sms or calls)."""
    ns = await env.namespace(partitions=6)
    prefix = "HERALD_" + service.upper().replace("-", "_") + "_"
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
                f"{prefix}LOG_LEVEL": "WARNING",
                f"{prefix}CONSUMER_BATCH": "1000",
                **extra,
            },
        ),
        services=[BY_NAME["sandbox"], BY_NAME[service]],
    )
    await publish_backlog(env, ns, et, make, n)
    try:
        stack.config.log_dir.mkdir(parents=True, exist_ok=True)
        stack.start_one("sandbox")
        stack.start_one(service)
        await asyncio.to_thread(stack.wait_ready, 90)
        sandbox = stack.url("sandbox")
        async with httpx.AsyncClient(timeout=60) as http:
            deadline = time.monotonic() + 600
            items: list[dict[str, object]] = []
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                items = (await http.get(f"{sandbox}/sandbox/api/{listing}")).json()["items"]
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


async def pacing_figure(
    env: BenchEnv,
    name: str,
    run: Callable[[BenchEnv, int, dict[str, str]], Awaitable[tuple[float, int]]],
    *,
    rate_setting: str,
    configured: float,
    n: int,
) -> Figure:
    """Achieved / configured rate with the sender paced at `configured` (its `rate_setting`)
    and the provider limiting each number to the same rate."""
    achieved, rejected = await run(
        env,
        n,
        {rate_setting: str(configured), "HERALD_SANDBOX_TWILIO_RATE_PER_NUMBER": str(configured)},
    )
    return Figure(
        name,
        f"pacing accuracy at {configured:.0f}/s (achieved / configured)",
        100 * achieved / configured,
        "%",
        f"n={n}, {rejected} x 429 from the provider, target 98-102 %",
    )
