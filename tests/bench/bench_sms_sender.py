"""sms-sender against the sandbox: SMS per second with pacing off, and pacing accuracy.

Both run as their own processes (as `make run` starts them); messages are published first so the
sender drains a backlog. Rates are measured where it matters, at the provider: from the sandbox's
acceptance times of the first and last message.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from senderbench import pacing_figure, provider_rate

from benchlib import BenchEnv, Figure
from herald_contracts import OUTBOUND_SMS, OutboundSms, utc_now

NAME = "sms_sender"


def _sms(i: int) -> OutboundSms:
    now = utc_now()
    return OutboundSms(
        message_id=f"bench-{uuid.uuid4().hex}",
        request_id=f"req-{i}",
        campaign_id="bench",
        customer_id=f"cust-{i % 2000}",
        to=f"+1201555{i % 10_000:04d}",
        body=f"Your engineer is booked for 14:00 (ref {i})",
        segments=1,
        encoding="GSM-7",
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )


async def _run(env: BenchEnv, n: int, extra: dict[str, str]) -> tuple[float, int]:
    """Publish n messages, start the sandbox and a sender; (accepted per second, 429 count)."""
    return await provider_rate(
        env, service="sms-sender", listing="sms", et=OUTBOUND_SMS, make=_sms, n=n, extra=extra
    )


async def bench(env: BenchEnv) -> list[Figure]:
    """Throughput with pacing off; achieved / configured rate with pacing on."""
    n = env.n(5000)
    rate, _ = await _run(env, n, {"HERALD_SMS_SENDER_RATE_PER_SECOND": "0"})
    figures = [
        Figure(
            NAME, "SMS/s, one sender process, pacing off", rate, "msg/s", f"n={n}, target >= 500"
        )
    ]
    figures.append(
        await pacing_figure(
            env,
            NAME,
            _run,
            rate_setting="HERALD_SMS_SENDER_RATE_PER_SECOND",
            configured=10.0,  # below what this machine can push: pacing is what is measured
            n=env.n(600),
        )
    )
    return figures
