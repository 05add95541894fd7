"""Create Herald's topics with their partitions and cleanup policies (`herald-topics create`).

The command connects as the services do: HERALD_KAFKA_BOOTSTRAP, HERALD_KAFKA_SECURITY_PROTOCOL,
HERALD_KAFKA_SASL_* and HERALD_KAFKA_SSL_CAFILE are read from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from herald_contracts import Topic, Topics, dlq_topic
from herald_kit._kafka import kafka_client_options
from herald_kit._settings import ServiceSettings

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
    replication_factor: int | None = None,
    min_insync_replicas: int | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are.

    Each topic gets `replication_factor` copies. Left out (the development stack and the tests),
    that is three, or one per broker up on a smaller cluster; the command always asks for three
    unless told otherwise, since a broker restarting when it runs must not leave every topic
    with fewer copies for good. `min_insync_replicas` defaults to one less than the copies
    when there are three or more, so an `acks=all` publish survives the loss of one broker and
    is refused rather than kept by a single broker. `client_options` are the services' Kafka
    connection options (TLS, SASL); `bootstrap` overrides their servers.
    """
    options = {**(client_options or {}), "bootstrap_servers": bootstrap}
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=30_000)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        copies = replication_factor or min(3, brokers)
        if copies > brokers:
            raise ValueError(f"replication factor {copies} needs {copies} brokers; {brokers} up")
        insync = min_insync_replicas or (copies - 1 if copies >= 3 else None)
        if insync is not None and insync > copies:
            raise ValueError(f"min.insync.replicas {insync} exceeds replication factor {copies}")
        existing = set(await admin.list_topics())
        wanted = [t for t in (topics or all_topics()) if t.name(namespace) not in existing]
        created: list[str] = []
        for topic in wanted:
            configs = topic.configs()
            if insync is not None:
                configs = {**configs, "min.insync.replicas": str(insync)}
            new = NewTopic(
                topic.name(namespace),
                partitions or topic.partitions,
                copies,
                topic_configs=configs,
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


def main(argv: list[str] | None = None) -> None:
    """CLI: herald-topics create [--bootstrap HOST:PORT] [--namespace NS]
    [--replication-factor N] [--min-insync-replicas N]."""
    settings = ServiceSettings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["create", "list"])
    parser.add_argument("--bootstrap", default=settings.kafka_bootstrap)
    parser.add_argument("--namespace", default=settings.topic_namespace)
    parser.add_argument(
        "--replication-factor",
        type=int,
        default=3,
        help="copies of each partition (default 3; 1 for a single-broker development cluster)",
    )
    parser.add_argument(
        "--min-insync-replicas",
        type=int,
        default=None,
        help="copies an acks=all publish must reach (default: replication factor - 1 from 3)",
    )
    args = parser.parse_args(argv)
    if args.command == "list":
        for t in all_topics():
            print(t.name(args.namespace), t.cleanup.value, t.partitions)
        return
    try:
        created = asyncio.run(
            ensure_topics(
                args.bootstrap,
                namespace=args.namespace,
                replication_factor=args.replication_factor,
                min_insync_replicas=args.min_insync_replicas,
                client_options=kafka_client_options(settings),
            )
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"topics: {len(created)} created, {len(all_topics()) - len(created)} already there")
