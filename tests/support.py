"""Helpers for tests: run an app against the real infrastructure, poll until true."""

from __future__ import annotations

import asyncio
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from fastapi import FastAPI

from herald_kit import Pacer, ServiceSettings, hash_key

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from herald_ingest.config import Settings as IngestSettings

S = TypeVar("S", bound=ServiceSettings)

TEST_KEY = "test-key-all-scopes"
READ_ONLY_KEY = "test-key-read-only"


def free_port() -> int:
    """A port free right now and below the kernel's ephemeral range (32768+ here).

    Below that range no outgoing connection (Kafka, the database, an HTTP client) can take the
    port between this call and the server's bind; a port handed out by binding to port 0 lies
    inside it, and CI once lost a test to exactly that race."""
    for _ in range(200):
        port = random.randrange(28_100, 32_700)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 28100-32700")


def api_keys() -> list[dict[str, Any]]:
    """The keys test apps accept: one with every scope, one read-only."""
    from herald_devstack import ALL_SCOPES

    return [
        {"name": "test", "hash": hash_key(TEST_KEY), "scopes": list(ALL_SCOPES)},
        {
            "name": "reader",
            "hash": hash_key(READ_ONLY_KEY),
            "scopes": [s for s in ALL_SCOPES if s.endswith(":read")],
        },
    ]


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app's lifespan (real connections) and give an HTTP client to it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://test",
            headers={"Authorization": f"Bearer {TEST_KEY}"},
        ) as client:
            await wait_ready(client)
            yield client


async def wait_ready(client: httpx.AsyncClient, within: float = 30) -> None:
    """Poll /readyz until 200."""
    deadline = asyncio.get_running_loop().time() + within
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await client.get("/readyz")
        if last.status_code == 200:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not ready: {last.json() if last is not None else None}")


async def eventually(probe: Callable[[], Any], *, within: float = 20, interval: float = 0.2) -> Any:
    """Await probe() until it returns something truthy; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


class MeanwhileInThePacer(Pacer):
    """A paced identity; `meanwhile` (the customer opting out, say) runs once, while the next
    message waits for its turn."""

    def __init__(self) -> None:
        super().__init__(1000.0)
        self.meanwhile: Callable[[], Awaitable[None]] | None = None

    async def acquire(self, identity: str) -> bool:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return await super().acquire(identity)


def service_settings(
    settings: type[S], infra: dict[str, str], namespace: str, db: str, **extra: Any
) -> S:
    """A service's settings on the test's broker, database and topics; `extra` adds the rest."""
    return settings(
        kafka_bootstrap=infra["kafka"],
        mongo_uri=infra["mongo"],
        mongo_db=db,
        topic_namespace=namespace,
        api_keys=api_keys(),
        **extra,
    )


def ingest_settings(infra: dict[str, str], namespace: str, db: str, **extra: Any) -> IngestSettings:
    """Ingest's settings on the test's broker, database and topics."""
    from herald_ingest.config import Settings

    return service_settings(Settings, infra, namespace, db, **extra)


def case_event(
    case_id: str,
    event_id: str,
    *,
    type_: str = "case.updated",
    source: str = "/crm",
    customer_ids: Sequence[str] = ("c1",),
    **extra: Any,
) -> dict[str, Any]:
    """A CloudEvent about a case as a CRM posts it to ingest; a `time` in `extra` is the
    event's time, the rest is its data."""
    time = extra.pop("time", None)
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": type_,
        "data": {"case_id": case_id, "customer_ids": list(customer_ids), **extra},
    }
    if time is not None:
        event["time"] = time
    return event


def cloudevent_headers(event_id: str, *, type_: str = "case.updated") -> list[tuple[str, bytes]]:
    """Kafka headers of a binary-mode CloudEvent from the ERP, as a backend system sends one."""
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_source", b"/erp"),
        ("ce_type", type_.encode()),
        ("content-type", b"application/json"),
    ]


@asynccontextmanager
async def open_reader(kafka: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of one topic from its beginning, in a group of its own."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka,
        auto_offset_reset="earliest",
        group_id=f"reader-{uuid.uuid4().hex[:6]}",
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def read_topic(
    kafka: str,
    topic: str,
    n: int,
    *,
    keep: Callable[[Any], bool] = lambda record: True,
    within: float = 20,
) -> list[Any]:
    """The records of a topic that `keep` accepts, read from its beginning until there are at
    least n of them."""
    records: list[Any] = []
    async with open_reader(kafka, topic) as consumer:

        async def enough() -> bool:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(r for r in recs if keep(r))
            return len(records) >= n

        await eventually(enough, within=within)
    return records


async def committed_offset(kafka: str, group: str, tp: TopicPartition) -> int | None:
    """The offset a consumer group has committed on the broker for a partition, if any."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    meta = offsets.get(tp)
    return meta.offset if meta is not None else None


async def is_committed(kafka: str, group: str, tp: TopicPartition, offset: int) -> bool:
    """Whether the group's committed offset for the partition is exactly `offset`."""
    return await committed_offset(kafka, group, tp) == offset


def unique_phone() -> str:
    """A valid, unique-enough E.164 number for a test (US 201-555 range)."""
    return f"+1201555{uuid.uuid4().int % 10_000:04d}"


# Valid mobile number plans, each placed by phonenumbers in one zone (or in zones that keep its
# clock). The dispatcher holds SMS and voice to the contact windows in every zone of the number
# as well as in the customer's, so a test's number must be where its customer is.
NUMBER_PLANS: dict[str, str] = {
    "Asia/Shanghai": "+86138{:08d}",
    "Asia/Tokyo": "+81901{:07d}",
    "Europe/London": "+447400{:06d}",
    "America/New_York": "+12122{:06d}",
    "America/Los_Angeles": "+12132{:06d}",
}


def phone_in(zone: str, n: int | None = None) -> str:
    """The n-th valid mobile number of a zone of NUMBER_PLANS (a random one without n); every
    plan holds at least a million."""
    import uuid

    return NUMBER_PLANS[zone].format((uuid.uuid4().int if n is None else n) % 1_000_000)


def daytime_zone() -> str:
    """A zone of NUMBER_PLANS where it is now between 10:00 and 18:00, so legal calling windows
    allow a send whenever the suite runs (with a number of `phone_in` that zone)."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    now = datetime.now(UTC)
    for name in NUMBER_PLANS:
        if 10 <= now.astimezone(ZoneInfo(name)).hour < 18:
            return name
    raise AssertionError("no daytime zone found")  # the plans span every hour of the day


def registered_consumers() -> dict[str, list[object]]:
    """Consumer group → the topics it consumes, read from every service's app as built."""
    import importlib

    from herald_devstack import SERVICES

    out: dict[str, list[object]] = {}
    for spec in SERVICES:
        app_mod = importlib.import_module(f"{spec.module}.app")
        cfg_mod = importlib.import_module(f"{spec.module}.config")
        app = app_mod.create_app(cfg_mod.Settings(_env_file=None))
        for loop in app.state.runtime.consumers:
            out[loop.group] = list(loop.topics)
    return out


async def consumer_lag(kafka: str, groups: dict[str, list[str]]) -> dict[str, int]:
    """How far each consumer group's commits are behind the ends of the topics it reads
    (group name -> topic names, both as on the broker)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        committed = {g: await admin.list_consumer_group_offsets(g) for g in groups}
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        topics = {t for names in groups.values() for t in names}
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    lag: dict[str, int] = {}
    for group, names in groups.items():
        done = committed[group]
        lag[group] = sum(
            max(0, end - (done[tp].offset if tp in done else 0))
            for tp, end in ends.items()
            if tp.topic in names
        )
    return lag
