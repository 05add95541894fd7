"""A sender's rate is what the provider allows the sender as a whole: the chart runs two replicas
of each (an autoscaler may add more), and together they must stay within the configured rate."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AsyncExitStack
from datetime import datetime

import httpx
from aiokafka.partitioner import DefaultPartitioner
from twilio_support import outbound_voice, producer, serving

from herald_contracts import OUTBOUND_VOICE
from herald_voice_sender.adapters.provider import Placed
from herald_voice_sender.app import create_app as voice_app
from herald_voice_sender.config import Settings as VoiceSettings
from support import free_port, unique_phone

RATE = 1.0  # calls per second for the caller id
PER_PARTITION = 6  # calls whose customers hash to each of the namespace's two partitions


class RecordingVoice:
    """A provider that notes when each call was placed and by which replica."""

    def __init__(self, replica: str, placed: list[tuple[float, str]]) -> None:
        self.replica = replica
        self.placed = placed

    async def call(
        self, *, to: str, url: str, status_callback: str, machine_detection: bool
    ) -> Placed:
        self.placed.append((time.monotonic(), self.replica))
        return Placed(provider_id=f"CA{uuid.uuid4().hex}", status="queued")

    async def find_placed(self, *, to: str, since: datetime) -> list[str]:
        return []

    async def close(self) -> None:
        pass


def customers_by_partition(partitions: int, each: int) -> list[str]:
    """Customer ids (the topic's key) spread evenly over the partitions, so each replica of a
    two-member group gets the same number of calls."""
    hashed = DefaultPartitioner()
    found: dict[int, list[str]] = {p: [] for p in range(partitions)}
    while any(len(ids) < each for ids in found.values()):
        cid = f"cust-{uuid.uuid4().hex[:8]}"
        ids = found[hashed(cid.encode(), list(range(partitions)), list(range(partitions)))]
        if len(ids) < each:
            ids.append(cid)
    return [cid for ids in found.values() for cid in ids]


async def test_two_voice_sender_replicas_together_keep_the_caller_id_s_rate(
    infra: dict[str, str], namespace: str, db_name: object
) -> None:
    """Two replicas in one consumer group, one partition each, RATE_PER_SECOND=1: the calls
    from the caller id come at 1/s in all, not 1/s from each replica."""
    placed: list[tuple[float, str]] = []
    database = db_name("voice_sender")  # type: ignore[operator]  # one database, as deployed
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        urls = []
        for replica in ("a", "b"):
            port = free_port()
            settings = VoiceSettings(
                port=port,
                public_base_url=f"http://127.0.0.1:{port}",
                kafka_bootstrap=infra["kafka"],
                mongo_uri=infra["mongo"],
                mongo_db=database,
                topic_namespace=namespace,
                twilio_account_sid="AC" + "0" * 32,
                twilio_auth_token="x" * 32,
                caller_id="+15005550006",
                rate_per_second=RATE,
                rate_burst=1,
                calling_hours_start="00:00",
                calling_hours_end="00:00",
            )
            app = voice_app(settings, provider=RecordingVoice(replica, placed))
            urls.append(await stack.enter_async_context(serving(app, port)))
        # Ready means every group of the replica owns a partition; with two partitions per
        # topic both replicas are ready only once each group has split between them.
        for _ in range(120):
            codes = [(await http.get(f"{url}/readyz")).status_code for url in urls]
            if codes == [200, 200]:
                break
            await asyncio.sleep(0.5)
        assert codes == [200, 200]
        await asyncio.sleep(1)
        prod = await stack.enter_async_context(producer(infra["kafka"], namespace))
        customers = customers_by_partition(2, PER_PARTITION)
        for cid in customers:
            msg = outbound_voice(unique_phone(), "Your case was updated.", customer_id=cid)
            await prod.publish(OUTBOUND_VOICE, msg, key=cid, event_id=msg.message_id)
        for _ in range(240):
            if len(placed) >= len(customers):
                break
            await asyncio.sleep(0.25)
    assert len(placed) == len(customers)
    assert {replica for _, replica in placed} == {"a", "b"}  # both replicas did call
    times = sorted(t for t, _ in placed)
    span = times[-1] - times[0]
    # Each replica may place its first call at once (a burst of 1 each); every later call
    # takes a slot of the one caller id's rate.
    rate = (len(customers) - 2) / span
    assert rate <= RATE * 1.05, f"{rate:.2f} calls/s from one caller id configured at {RATE}/s"
