"""The kit's consumer loops on the real broker: a record that cannot be handled goes to the DLQ
with its reason, whatever it is made of, and the records after it are handled and committed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic import BaseModel

from herald_contracts import BY_TYPE, Topics, dlq_topic
from herald_kit import (
    ConcurrentConsumerLoop,
    ConsumerLoop,
    EventProducer,
    PermanentError,
    ServiceSettings,
    decode,
    encode,
)
from support import eventually, is_committed

TOPIC = Topics.ENGAGEMENT_REPLIES
GROUP = "preferences"  # one of the groups whose DLQ topic exists in every namespace
LOOPS = [ConsumerLoop, ConcurrentConsumerLoop]


class Probe(BaseModel):
    n: int


class DeadLetters:
    """What arrives on the group's DLQ."""

    def __init__(self, kafka: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka,
            group_id=f"dlq-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            fetch_max_bytes=8 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        self.records: list[ConsumerRecord[bytes, bytes]] = []

    async def poll(self) -> list[ConsumerRecord[bytes, bytes]]:
        for recs in (await self.consumer.getmany(timeout_ms=200)).values():
            self.records.extend(recs)
        return self.records


@asynccontextmanager
async def _running(
    loop_type: type[ConsumerLoop], infra: dict[str, str], namespace: str, handler: object
) -> AsyncIterator[tuple[ConsumerLoop, EventProducer, DeadLetters]]:
    settings = ServiceSettings(
        kafka_bootstrap=infra["kafka"], topic_namespace=namespace, retry_base_seconds=0.01
    )
    producer = EventProducer(settings, "test")
    await producer.start()
    loop = loop_type(settings, producer, GROUP, [TOPIC], handler)  # type: ignore[arg-type]
    dead = DeadLetters(infra["kafka"], dlq_topic(GROUP).name(namespace))
    await dead.consumer.start()
    await loop.start()
    try:
        yield loop, producer, dead
    finally:
        await loop.stop()
        await dead.consumer.stop()
        await producer.stop()


def _good_record() -> tuple[list[tuple[str, bytes]], bytes]:
    return encode(next(iter(BY_TYPE.values())), Probe(n=1), source="test")


@pytest.mark.parametrize("loop_type", LOOPS, ids=lambda t: t.__name__)
async def test_a_record_with_neither_key_nor_value_is_dead_lettered_and_the_next_is_handled(
    infra: dict[str, str], namespace: str, loop_type: type[ConsumerLoop]
) -> None:
    handled: list[int] = []

    async def handler(record: ConsumerRecord[bytes, bytes]) -> None:
        decode(record, Probe)  # a record of nothing is no event: DecodeError
        handled.append(record.offset)

    tp = TopicPartition(TOPIC.name(namespace), 0)
    async with _running(loop_type, infra, namespace, handler) as (loop, producer, dead):
        # aiokafka's send refuses a record without key and value; another client may write one.
        batch = producer.raw.create_batch()
        batch.append(key=None, value=None, timestamp=None, headers=[])
        batch.close()
        meta = await (await producer.raw.send_batch(batch, tp.topic, partition=0))
        bad_at = int(meta.offset)
        headers, value = _good_record()
        good = await producer.raw.send_and_wait(
            tp.topic, value, key=b"customer-1", partition=0, headers=headers
        )
        good_at = int(good.offset)

        await eventually(lambda: handled == [good_at])
        entries = await eventually(dead.poll)
        assert len(entries) == 1
        entry = dict(entries[0].headers)
        assert entry["x-herald-error"] == b"DecodeError"
        assert entry["x-herald-source-offset"] == str(bad_at).encode()
        assert entry["x-herald-reason"]
        assert entries[0].value is None
        assert entries[0].key == f"{tp.topic}/0/{bad_at}".encode()
        assert await eventually(
            lambda: is_committed(infra["kafka"], loop.group_id, tp, good_at + 1), within=20
        )
        assert loop.ready()  # the loop (and every worker) lives on


@pytest.mark.parametrize("loop_type", LOOPS, ids=lambda t: t.__name__)
async def test_a_record_too_large_to_copy_to_the_dlq_is_dead_lettered_as_a_reference(
    infra: dict[str, str], namespace: str, loop_type: type[ConsumerLoop]
) -> None:
    handled: list[int] = []

    async def handler(record: ConsumerRecord[bytes, bytes]) -> None:
        if len(record.value or b"") > 1000:
            raise PermanentError("rejected: " + "x" * 1990)  # with our headers, over the limit
        handled.append(record.offset)

    tp = TopicPartition(TOPIC.name(namespace), 0)
    async with _running(loop_type, infra, namespace, handler) as (loop, producer, dead):
        # Just under the producer's max_request_size (1 MiB) on its own.
        big = await producer.raw.send_and_wait(
            tp.topic, b"v" * (1024 * 1024 - 500), key=b"customer-1", partition=0
        )
        small = await producer.raw.send_and_wait(tp.topic, b"fine", key=b"customer-2", partition=0)
        await eventually(lambda: handled == [small.offset])
        entries = await eventually(dead.poll)
        assert len(entries) == 1
        entry = dict(entries[0].headers)
        assert entry["x-herald-error"] == b"PermanentError"
        assert entry["x-herald-copy"] == b"reference"
        reason = entry["x-herald-reason"].decode()
        assert reason.startswith("rejected: ")
        assert f"read the record at {tp.topic}/0/{big.offset}" in reason
        assert await eventually(
            lambda: is_committed(infra["kafka"], loop.group_id, tp, small.offset + 1), within=20
        )


async def test_a_derived_event_too_large_for_the_broker_is_dead_lettered_not_retried(
    infra: dict[str, str], namespace: str
) -> None:
    attempts: list[int] = []
    handled: list[int] = []

    async def handler(record: ConsumerRecord[bytes, bytes]) -> None:
        if record.value == b"make-it-large":
            attempts.append(record.offset)
            # The producer refuses a record over max_request_size before sending it.
            await producer.send(
                Topics.DELIVERY_STATUS, b"d" * (2 * 1024 * 1024), key="c", headers=[]
            )
        handled.append(record.offset)

    tp = TopicPartition(TOPIC.name(namespace), 0)
    async with _running(ConsumerLoop, infra, namespace, handler) as (loop, producer, dead):
        large = await producer.raw.send_and_wait(
            tp.topic, b"make-it-large", key=b"customer-1", partition=0
        )
        after = await producer.raw.send_and_wait(tp.topic, b"fine", key=b"customer-1", partition=0)
        await eventually(lambda: handled == [after.offset])
        entries = await eventually(dead.poll)
        entry = dict(entries[0].headers)
        assert entry["x-herald-error"] == b"MessageSizeTooLargeError"
        assert entry["x-herald-error-kind"] == b"kafka-rejected"
        assert entry["x-herald-source-offset"] == str(large.offset).encode()
        assert entries[0].value == b"make-it-large"
        assert attempts == [large.offset]  # tried once: sent again, it fails again
        assert await eventually(
            lambda: is_committed(infra["kafka"], loop.group_id, tp, after.offset + 1), within=20
        )
        await asyncio.sleep(0.5)
        assert len(await dead.poll()) == 1
