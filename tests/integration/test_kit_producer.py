"""The kit's producer replaces itself when the broker refuses it for good, on the real broker."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber

from herald_contracts import Topics
from herald_kit import EventProducer, ServiceSettings


async def test_a_producer_refused_for_good_is_replaced_and_publishes_again(
    infra: dict[str, str], namespace: str
) -> None:
    producer = EventProducer(
        ServiceSettings(kafka_bootstrap=infra["kafka"], topic_namespace=namespace), "test"
    )
    await producer.start()
    topic = Topics.ENGAGEMENT_REPLIES
    try:
        first = producer.raw
        # A passing outage keeps the producer; a broker that lost its sequence numbers does not.
        assert not await producer.recover(KafkaConnectionError())
        assert producer.raw is first
        assert await producer.recover(OutOfOrderSequenceNumber())
        assert producer.raw is not first
        marker = uuid.uuid4().hex.encode()
        await producer.send(topic, marker, key="k", headers=[])
    finally:
        await producer.stop()
    reader = AIOKafkaConsumer(
        topic.name(namespace),
        bootstrap_servers=infra["kafka"],
        auto_offset_reset="earliest",
        group_id=f"reader-{uuid.uuid4().hex[:6]}",
    )
    await reader.start()
    try:
        seen: list[bytes] = []
        for _ in range(50):
            for records in (await reader.getmany(timeout_ms=200)).values():
                seen += [r.value for r in records if r.value is not None]
            if marker in seen:
                break
        assert marker in seen
    finally:
        await reader.stop()
