"""`herald-topics create` against the real broker: copies per partition as the cluster allows,
and the in-sync minimum an operator asks for."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from herald_contracts import Topics
from herald_kit import delete_namespace, ensure_topics


async def _topic(bootstrap: str, name: str) -> tuple[int, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (meta,) = await admin.describe_topics([name])
        copies = len(meta["partitions"][0]["replicas"])
        (answer,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, None)]
        )
        configs = {entry[0]: entry[1] for entry in answer.resources[0][4]}
        return copies, configs
    finally:
        await admin.close()


async def test_one_broker_gets_one_copy_and_the_asked_in_sync_minimum(
    infra: dict[str, str],
) -> None:
    ns = f"t{uuid.uuid4().hex[:10]}."
    topic = Topics.EVENTS_INBOUND
    try:
        created = await ensure_topics(
            infra["kafka"], namespace=ns, topics=[topic], partitions=1, min_insync_replicas=1
        )
        assert created == [topic.name(ns)]
        copies, configs = await _topic(infra["kafka"], topic.name(ns))
        assert copies == 1
        assert configs["min.insync.replicas"] == "1"
        assert configs["cleanup.policy"] == topic.cleanup.value
    finally:
        await delete_namespace(infra["kafka"], ns)


async def test_more_copies_than_brokers_is_refused_before_any_topic_is_made(
    infra: dict[str, str],
) -> None:
    ns = f"t{uuid.uuid4().hex[:10]}."
    with pytest.raises(ValueError, match="replication factor 3 needs 3 brokers"):
        await ensure_topics(infra["kafka"], namespace=ns, replication_factor=3)
    admin = AIOKafkaAdminClient(bootstrap_servers=infra["kafka"])
    await admin.start()
    try:
        assert not [t for t in await admin.list_topics() if t.startswith(ns)]
    finally:
        await admin.close()
