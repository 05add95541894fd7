"""The kit's concurrent consumer loop on the real broker: a slow record holds up only its own key
and the commit point, never records that arrive after it; a stop lets it finish and commits it."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import ConsumerRecord, TopicPartition

from herald_contracts import Topics
from herald_kit import ConcurrentConsumerLoop, EventProducer, ServiceSettings
from support import committed_offset, eventually, is_committed

TOPIC = Topics.ENGAGEMENT_REPLIES


async def test_a_slow_record_holds_its_key_and_the_commit_point_but_not_later_records(
    infra: dict[str, str], namespace: str
) -> None:
    settings = ServiceSettings(kafka_bootstrap=infra["kafka"], topic_namespace=namespace)
    producer = EventProducer(settings, "test")
    await producer.start()
    handled: list[bytes] = []
    release = asyncio.Event()

    async def handler(record: ConsumerRecord[bytes, bytes]) -> None:
        if record.value == b"slow-1":
            await release.wait()
        handled.append(record.value or b"")

    group = f"pipeline-{uuid.uuid4().hex[:6]}"
    loop = ConcurrentConsumerLoop(
        settings, producer, group, [TOPIC], handler, batch=50, concurrency=8
    )
    tp = TopicPartition(TOPIC.name(namespace), 0)

    async def send(key: str, value: str) -> int:
        meta = await producer.raw.send_and_wait(
            tp.topic, value.encode(), key=key.encode(), partition=0
        )
        return int(meta.offset)

    await loop.start()
    try:
        slow_at = await send("slow", "slow-1")
        await send("slow", "slow-2")  # the same key: only after slow-1
        for i in range(5):
            await send("a", f"a-{i}")
        await eventually(lambda: len(handled) == 5)
        assert handled == [f"a-{i}".encode() for i in range(5)]

        # Arriving while slow-1 is still in flight, it is handled at once (not after the batch).
        await send("b", "b-1")
        await eventually(lambda: b"b-1" in handled)
        assert b"slow-1" not in handled and b"slow-2" not in handled
        # Nothing past the unfinished record is committed: a crash now redelivers it.
        committed = await committed_offset(infra["kafka"], f"{namespace}{group}", tp)
        assert committed is None or committed <= slow_at

        release.set()
        await eventually(lambda: b"slow-2" in handled)
        assert handled.index(b"slow-1") < handled.index(b"slow-2")
        end = slow_at + 8
        assert await eventually(
            lambda: is_committed(infra["kafka"], f"{namespace}{group}", tp, end), within=20
        )
    finally:
        await loop.stop()
        await producer.stop()


async def test_a_stop_lets_the_record_in_flight_finish_and_commits_it_on_the_broker(
    infra: dict[str, str], namespace: str
) -> None:
    """A deploy's SIGTERM while a provider call is in flight: the call ends, the record is
    committed, and the record behind it (not started) is left to the next owner."""
    settings = ServiceSettings(kafka_bootstrap=infra["kafka"], topic_namespace=namespace)
    producer = EventProducer(settings, "test")
    await producer.start()
    in_flight, answer = asyncio.Event(), asyncio.Event()
    handled: list[bytes] = []

    async def handler(record: ConsumerRecord[bytes, bytes]) -> None:
        in_flight.set()
        await answer.wait()  # the provider's answer
        handled.append(record.value or b"")

    group = f"drain-{uuid.uuid4().hex[:6]}"
    loop = ConcurrentConsumerLoop(settings, producer, group, [TOPIC], handler, concurrency=8)
    tp = TopicPartition(TOPIC.name(namespace), 0)
    await loop.start()
    try:
        first = await producer.raw.send_and_wait(tp.topic, b"m-1", key=b"cust-1", partition=0)
        await producer.raw.send_and_wait(tp.topic, b"m-2", key=b"cust-1", partition=0)
        await asyncio.wait_for(in_flight.wait(), 20)

        stopping = asyncio.create_task(loop.stop())
        await asyncio.sleep(0.5)
        assert not stopping.done(), "the stop did not wait for the record in flight"
        answer.set()
        await asyncio.wait_for(stopping, 15)

        assert handled == [b"m-1"]
        assert await committed_offset(infra["kafka"], f"{namespace}{group}", tp) == first.offset + 1
    finally:
        await loop.stop()
        await producer.stop()
