"""voice-sender against the sandbox: calls placed per second with pacing off, and pacing accuracy.

Modelled on bench_sms_sender: the sandbox and the sender run as their own processes (as `make run`
starts them), calls are published first so the sender drains a backlog, and rates are measured
at the provider, from the sandbox's acceptance times of the first and last call. The sandbox
plays every call as Twilio would (it fetches the TwiML from the sender), so that load is part of
the figure; status callbacks are off.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from senderbench import pacing_figure, provider_rate

from benchlib import BenchEnv, Figure
from herald_contracts import OUTBOUND_VOICE, OutboundVoice, utc_now

NAME = "voice_sender"


def _call(i: int) -> OutboundVoice:
    now = utc_now()
    return OutboundVoice(
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


async def _run(env: BenchEnv, n: int, extra: dict[str, str]) -> tuple[float, int]:
    """Publish n calls, start the sandbox and a sender; (calls accepted per second, 429s)."""
    return await provider_rate(
        env,
        service="voice-sender",
        listing="calls",
        et=OUTBOUND_VOICE,
        make=_call,
        n=n,
        extra=extra,
    )


async def bench(env: BenchEnv) -> list[Figure]:
    """Throughput with pacing off; achieved / configured rate with pacing on."""
    n = env.n(2000)
    rate, _ = await _run(
        env,
        n,
        {"HERALD_VOICE_SENDER_RATE_PER_SECOND": "0", "HERALD_VOICE_SENDER_CONCURRENCY": "64"},
    )
    figures = [Figure(NAME, "calls/s, one sender process, pacing off", rate, "call/s", f"n={n}")]
    figures.append(
        await pacing_figure(
            env,
            NAME,
            _run,
            rate_setting="HERALD_VOICE_SENDER_RATE_PER_SECOND",
            configured=5.0,  # a caller id's pace is low in practice (the default is 1/s)
            n=env.n(250),
        )
    )
    return figures
