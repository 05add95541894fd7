"""Readiness gate: the local views have read the compacted topics up to where they stood at start.

Until then a decision could use a customer's or a case's stale state, so requests wait (bounded)
and /readyz says not ready.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from herald_contracts import Topic
from herald_kit import ServiceSettings, kafka_client_options, start_client, stop_client

log = logging.getLogger("herald.dispatcher.catchup")


async def partitions(settings: ServiceSettings, topics: list[str]) -> list[TopicPartition]:
    """Every partition of the named topics."""
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    try:
        await start_client(admin)
        described = await admin.describe_topics(topics)
    finally:
        await stop_client(admin)
    return [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]


class CatchUp:
    """Compare the views group's committed offsets with the topics' end offsets at start."""

    def __init__(self, settings: ServiceSettings, group: str, topics: list[Topic]) -> None:
        self.settings = settings
        self.group_id = f"{settings.topic_namespace}{group}"
        self.topics = [t.name(settings.topic_namespace) for t in topics]
        self.targets: dict[TopicPartition, int] = {}
        self._done = asyncio.Event()

    async def start(self) -> None:
        """Note where each partition of the view topics ends right now."""
        parts = await partitions(self.settings, self.topics)
        consumer = AIOKafkaConsumer(**kafka_client_options(self.settings), enable_auto_commit=False)
        try:
            await start_client(consumer)
            ends = await consumer.end_offsets(parts) if parts else {}
        finally:
            await stop_client(consumer)
        self.targets = {tp: end for tp, end in ends.items() if end > 0}
        if not self.targets:
            self._done.set()

    async def caught_up(self) -> bool:
        """True once every partition's committed offset reached its end offset at start."""
        if self._done.is_set():
            return True
        admin = AIOKafkaAdminClient(**kafka_client_options(self.settings))
        try:
            await start_client(admin)
            committed = await admin.list_consumer_group_offsets(self.group_id)
        except KafkaError as exc:
            log.warning("cannot read view offsets", extra={"error": str(exc)})
            return False
        finally:
            await stop_client(admin)
        for tp, end in self.targets.items():
            meta = committed.get(tp)
            if meta is None or meta.offset < end:
                return False
        self._done.set()
        return True

    async def wait(self, within: float) -> bool:
        """Wait until caught up, at most `within` seconds; whether it was."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not await self.caught_up():
            if loop.time() >= deadline:
                log.warning("views not caught up; deciding on what is known")
                return False
            await asyncio.sleep(0.2)
        return True
