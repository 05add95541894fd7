"""Email-sender throughput against the sandbox's SMTP sink, and pacing accuracy.

The sink runs as its own process (as in `make run`); the sender runs in this process, so the
figures are per sender process. Rates come from the sink's own receive times (first to last
message), which leaves start-up and group joining out of the steady-state figure.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime
from typing import Any

import httpx

from benchlib import BenchEnv, Figure
from herald_contracts import OUTBOUND_EMAIL, OutboundEmail, utc_now
from herald_email_sender.app import create_app
from herald_email_sender.config import Settings
from herald_kit import EventProducer, ServiceSettings
from support import free_port

NAME = "email-sender"


class Sandbox:
    """`python -m herald_sandbox` on free ports."""

    def __init__(self) -> None:
        self.port = free_port()
        self.smtp_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Sandbox:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.update(
            {
                "HERALD_SANDBOX_PORT": str(self.port),
                "HERALD_SANDBOX_SMTP_PORT": str(self.smtp_port),
                "HERALD_SANDBOX_LOG_LEVEL": "WARNING",
            }
        )
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; start-up is polled
            [sys.executable, "-m", "herald_sandbox"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        async with httpx.AsyncClient(timeout=2) as client:
            for _ in range(100):
                try:
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError("sandbox did not start")

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


async def _run(env: BenchEnv, sandbox: Sandbox, *, n: int, rate: float) -> tuple[float, int, float]:
    """Send n emails through one sender process: (achieved rate, emails the sink got, CPU ms
    this process spent per email while sending)."""
    ns = await env.namespace(partitions=6)
    producer = EventProducer(ServiceSettings(kafka_bootstrap=env.kafka, topic_namespace=ns), "b")
    await producer.start()
    tag = uuid.uuid4().hex[:6]
    try:
        futures = []
        for i in range(n):
            msg = OutboundEmail(
                message_id=f"m-{tag}-{i}",
                request_id=f"r-{tag}-{i}",
                campaign_id="bench",
                customer_id=f"c-{tag}-{i % 997}",
                to=f"c{i}-{tag}@example.com",
                subject="Your engineer is booked",
                text="Your engineer arrives at 14:00. Reply to this email to change it.",
                html="<p>Your engineer arrives at <b>14:00</b>.</p>",
                created_at=utc_now(),
            )
            futures.append(
                producer.publish(OUTBOUND_EMAIL, msg, key=msg.customer_id, event_id=msg.message_id)
            )
            if len(futures) >= 500:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    settings = Settings(
        kafka_bootstrap=env.kafka,
        topic_namespace=ns,
        mongo_uri=env.mongo,
        mongo_db=f"b_email_{tag}",
        smtp_host="127.0.0.1",
        smtp_port=sandbox.smtp_port,
        smtp_security="none",
        smtp_pool_size=32,
        link_secret="bench-secret",
        public_base_url="https://mail.herald.test",
        rate_per_second=rate,
        send_concurrency=128,
        consumer_batch=500,
        log_level="WARNING",
    )
    app = create_app(settings)
    cpu0 = time.process_time()
    async with app.router.lifespan_context(app), httpx.AsyncClient(timeout=30) as http:
        deadline = time.monotonic() + max(120.0, 3 * n / (rate or 100))
        items: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            r = await http.get(f"{sandbox.url}/sandbox/api/emails", params={"to": None})
            items = [i for i in r.json()["items"] if tag in i["to"][0]]
            if len(items) >= n:
                break
    cpu_ms = 1000 * (time.process_time() - cpu0) / max(1, len(items))
    times = sorted(datetime.fromisoformat(i["received_at"]).timestamp() for i in items)
    if len(times) < 2:
        return 0.0, len(items), cpu_ms
    return (len(times) - 1) / (times[-1] - times[0]), len(items), cpu_ms


async def bench(env: BenchEnv) -> list[Figure]:
    """Emails per second with pacing off; achieved ÷ configured rate with pacing on."""
    figures: list[Figure] = []
    async with Sandbox() as sandbox:
        n = env.n(5000)
        rate, got, cpu_ms = await _run(env, sandbox, n=n, rate=0)
        figures.append(
            Figure(NAME, "emails/s, one process, pacing off", rate, "msg/s", f"{got}/{n} sent")
        )
        figures.append(
            Figure(
                NAME,
                "sender CPU per email (pacing off)",
                cpu_ms,
                "ms",
                f"~{1000 / cpu_ms:.0f} emails/s per free core" if cpu_ms else "",
            )
        )
        # Below the machine's capacity, so the figure measures the pacer, not the bottleneck.
        configured = 25.0
        n = env.n(1000)
        achieved, got, _ = await _run(env, sandbox, n=n, rate=configured)
        figures.append(
            Figure(
                NAME,
                f"pacing accuracy at {configured:.0f}/s",
                100 * achieved / configured if achieved else 0.0,
                "%",
                f"achieved {achieved:.1f}/s; {got}/{n} sent",
            )
        )
    return figures
