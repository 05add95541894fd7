"""Hostile bytes on every consumed topic: each lands in its group's DLQ with a reason, the
consumers keep going (a real event still becomes an SMS afterwards) and lag returns to zero."""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaProducer
from chaos.scenario import Scenario, read_topic
from pydantic import BaseModel

from herald_contracts import BY_TYPE, dlq_topic
from herald_devstack import Stack
from herald_kit import encode
from support import TEST_KEY, consumer_lag, eventually, registered_consumers

# Consumer group -> the topics it consumes, as the services register them.
CONSUMED = registered_consumers()
TYPE_OF = {et.topic.base: et for et in BY_TYPE.values()}
Hostile = list[tuple[bytes, list[tuple[str, bytes]]]]


def hostile_records(topic_base: str, rng: random.Random) -> Hostile:
    """(value, headers) pairs a consumer must refuse: noise, broken CloudEvents, wrong data."""
    et = TYPE_OF.get(topic_base)
    good_headers: list[tuple[str, bytes]] = []
    if et is not None:
        good_headers, _ = encode(et, _Empty(), source="fuzz")
    wrong_type = [(k, b"com.example.unknown" if k == "ce_type" else v) for k, v in good_headers]
    out: Hostile = [
        (rng.randbytes(rng.randrange(1, 2048)), []),  # noise, no headers
        (b"{}", []),  # JSON, but not a CloudEvent
        (b"\xff\xfe\x00 not utf-8", good_headers),  # CloudEvent headers, undecodable body
        (b'{"truncated": ', good_headers),  # invalid JSON
        (json.dumps({"case_id": 5, "customer_id": None}).encode(), good_headers),  # schema
        (json.dumps([1, 2, 3]).encode(), good_headers),  # wrong shape
        (b"{}", wrong_type),  # unknown event type
        (b"", good_headers),  # empty body (not a tombstone: a tombstone has no value at all)
    ]
    return out


class _Empty(BaseModel):
    """Stands in for a model when only the headers of a valid event are wanted."""


@pytest.mark.e2e
@pytest.mark.timeout(600)
async def test_hostile_bytes_land_in_dlqs_and_consumers_keep_going(
    fuzz_stack: Stack, infra: dict[str, str]
) -> None:
    ns = fuzz_stack.config.namespace
    rng = random.Random(20261124)
    per_topic: dict[str, int] = defaultdict(int)
    topics_by_base = {t.base: t for topics in CONSUMED.values() for t in topics}
    producer = AIOKafkaProducer(bootstrap_servers=infra["kafka"], enable_idempotence=True)
    await producer.start()
    try:
        for base, topic in sorted(topics_by_base.items()):
            for value, headers in hostile_records(base, rng):
                key = f"fuzz-{uuid.uuid4().hex[:6]}".encode()
                await producer.send_and_wait(topic.name(ns), value, key=key, headers=headers)
                per_topic[base] += 1
    finally:
        await producer.stop()
    # Every group reading a topic must dead-letter every hostile record on it.
    sent = {g: sum(per_topic[t.base] for t in topics) for g, topics in CONSUMED.items()}

    async def dead_lettered() -> dict[str, list[object]]:
        got = {g: await read_topic(infra["kafka"], dlq_topic(g).name(ns)) for g in CONSUMED}
        return got if all(len(got[g]) >= n for g, n in sent.items()) else {}

    dlqs = await eventually(dead_lettered, within=180, interval=2)
    for group, records in dlqs.items():
        assert len(records) == sent[group], (group, len(records), sent[group])
        for record in records:
            headers = dict(record.headers or ())  # type: ignore[attr-defined]
            assert headers.get("x-herald-reason"), (group, headers)
            assert headers.get("x-herald-error-kind") == b"permanent", (group, headers)

    # The consumers are still up: a real event still becomes exactly one SMS.
    scenario = Scenario(fuzz_stack, size=3, api_key=TEST_KEY, suppress_every=0)
    await scenario.seed(concurrency=1)
    await scenario.wait_views()
    await scenario.post_events(range(3), rate=None, batch=3)

    async def delivered() -> list[dict[str, object]]:
        items = await scenario.provider_messages()
        return items if len(items) >= 3 else []

    items = await eventually(delivered, within=120)
    assert sorted(str(m["to"]) for m in items) == sorted(
        scenario.contact(i)["channels"]["sms"] for i in range(3)
    )
    # ...and every group has committed past everything, the hostile records included.
    for group, topics in CONSUMED.items():
        names = [t.name(ns) for t in topics]

        async def caught_up(g: str = group, n: list[str] = names) -> bool:
            return (await consumer_lag(infra["kafka"], {f"{ns}{g}": n}))[f"{ns}{g}"] == 0

        await eventually(caught_up, within=60, interval=1)
