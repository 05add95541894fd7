"""Create Herald's topics with their partitions and cleanup policies (`herald-topics create`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from herald_contracts import Topic, Topics, dlq_topic

log = logging.getLogger("herald.topics")

CONSUMER_GROUPS = (
    "ingest",
    "ingest-timeline",
    "preferences",
    "scheduler",
    "scheduler-timers",
    "scheduler-stats",
    "dispatcher",
    "dispatcher-views",
    "dispatcher-outcomes",
    "sms-sender",
    "email-sender",
    "voice-sender",
    "voice-sender-callbacks",
)


def all_topics() -> list[Topic]:
    """Every topic, DLQs included."""
    return [*Topics.all(), *(dlq_topic(g) for g in CONSUMER_GROUPS)]


async def ensure_topics(
    bootstrap: str,
    *,
    namespace: str = "",
    topics: Iterable[Topic] | None = None,
    partitions: int | None = None,
) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in (topics or all_topics()) if t.name(namespace) not in existing]
        created: list[str] = []
        for topic in wanted:
            new = NewTopic(
                topic.name(namespace),
                partitions or topic.partitions,
                1,
                topic_configs=topic.configs(),
            )
            try:
                await admin.create_topics([new])
                created.append(new.name)
            except TopicAlreadyExistsError:
                pass
        # Wait until every topic has leaders, so producers don't race topic creation.
        names = [t.name(namespace) for t in (topics or all_topics())]
        for _ in range(100):
            meta = await admin.describe_topics(names)
            if all(
                t.get("error_code", 0) == 0
                and t.get("partitions")
                and all(p.get("leader", -1) >= 0 for p in t["partitions"])
                for t in meta
            ):
                break
            await asyncio.sleep(0.1)
        return created
    finally:
        await admin.close()


async def delete_namespace(bootstrap: str, namespace: str) -> None:
    """Delete every topic under a namespace (tests clean up after themselves)."""
    if not namespace:
        raise ValueError("refusing to delete topics without a namespace")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [n for n in await admin.list_topics() if n.startswith(namespace)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def main() -> None:
    """CLI: herald-topics create [--bootstrap HOST:PORT] [--namespace NS]."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["create", "list"])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--namespace", default="")
    args = parser.parse_args()
    if args.command == "list":
        for t in all_topics():
            print(t.name(args.namespace), t.cleanup.value, t.partitions)
        return
    created = asyncio.run(ensure_topics(args.bootstrap, namespace=args.namespace))
    print(f"topics: {len(created)} created, {len(all_topics()) - len(created)} already there")
