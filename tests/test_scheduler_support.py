"""Helpers for the scheduler's tests: a replica against the real infrastructure, a publisher
of the other services' events, and a reader of contact.requests.v1."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import BaseModel

from herald_contracts import (
    CASE_CHANGED,
    CONTACT_PREFERENCES,
    CaseChanged,
    CaseState,
    ChannelAddress,
    ContactPreferences,
    ContactRequest,
    EventRef,
    EventType,
    Topics,
)
from herald_kit import decode, encode
from herald_scheduler.app import create_app
from herald_scheduler.config import Settings
from support import eventually, open_reader, running, service_settings

Doc = dict[str, Any]


def scheduler_settings(infra: dict[str, str], namespace: str, db: str, **extra: Any) -> Settings:
    """Fast ticks so tests wait little; everything else as in production."""
    return service_settings(
        Settings,
        infra,
        namespace,
        db,
        timer_poll_seconds=0.1,
        lease_tick_seconds=0.3,
        lease_ttl_seconds=2,
        **extra,
    )


@asynccontextmanager
async def scheduler(
    infra: dict[str, str], namespace: str, db: str, **extra: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """One scheduler replica with its HTTP client."""
    async with running(create_app(scheduler_settings(infra, namespace, db, **extra))) as client:
        yield client


class Publisher:
    """Publishes events as the other services would."""

    def __init__(self, producer: AIOKafkaProducer, namespace: str) -> None:
        self.producer = producer
        self.namespace = namespace

    async def send(self, et: EventType, body: BaseModel, key: str) -> None:
        headers, value = encode(et, body, source="test")
        await self.producer.send_and_wait(
            et.topic.name(self.namespace), value, key=key.encode(), headers=headers
        )

    async def change(
        self,
        case_id: str,
        version: int,
        status: str,
        customers: list[str],
        etype: str = "",
        *,
        late: bool = False,
    ) -> None:
        state = CaseState(
            case_id=case_id,
            version=version,
            customer_ids=customers,
            status=status,
            updated_at=datetime.now(UTC),
        )
        event = EventRef(
            id=f"e-{uuid.uuid4().hex[:8]}", source="/crm", type=etype or "case.updated"
        )
        await self.send(CASE_CHANGED, CaseChanged(event=event, state=state, late=late), case_id)


@asynccontextmanager
async def open_publisher(infra: dict[str, str], namespace: str) -> AsyncIterator[Publisher]:
    producer = AIOKafkaProducer(bootstrap_servers=infra["kafka"])
    await producer.start()
    try:
        yield Publisher(producer, namespace)
    finally:
        await producer.stop()


class Requests:
    """Reads contact.requests.v1 from the beginning, accumulating what arrived."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.items: list[ContactRequest] = []

    async def poll(self) -> list[ContactRequest]:
        batch = await self.consumer.getmany(timeout_ms=200)
        for records in batch.values():
            self.items.extend(decode(r, ContactRequest).data for r in records)
        return self.items

    async def wait_for(
        self, predicate: Callable[[list[ContactRequest]], bool], within: float = 30
    ) -> list[ContactRequest]:
        async def probe() -> bool:
            return predicate(await self.poll())

        await eventually(probe, within=within, interval=0.05)
        return self.items

    def of(self, campaign_id: str) -> list[ContactRequest]:
        return [r for r in self.items if r.campaign.id == campaign_id]


@asynccontextmanager
async def open_requests(infra: dict[str, str], namespace: str) -> AsyncIterator[Requests]:
    async with open_reader(infra["kafka"], Topics.CONTACT_REQUESTS.name(namespace)) as consumer:
        yield Requests(consumer)


def campaign_body(**changes: Any) -> Doc:
    body: Doc = {
        "name": "Delayed parcels",
        "topic": "service-updates",
        "trigger": {"kind": "event", "event_types": ["case.updated"]},
        "messages": {"sms": {"en": {"body": "Case {{ case.case_id }}: {{ case.status }}"}}},
    }
    body.update(changes)
    return body


async def active_campaign(client: httpx.AsyncClient, **changes: Any) -> str:
    r = await client.post("/v1/campaigns", json=campaign_body(**changes))
    assert r.status_code == 201, r.text
    cid: str = r.json()["id"]
    r = await client.post(f"/v1/campaigns/{cid}/activate")
    assert r.status_code == 200, r.text
    return cid


def preferences(customer_id: str, *, locale: str = "en", version: int = 1) -> ContactPreferences:
    """A customer's preference snapshot as the preferences service publishes it."""
    return ContactPreferences(
        customer_id=customer_id,
        version=version,
        channels={"sms": ChannelAddress(address="+12015550100")},
        ranking=["sms"],
        consents={"service-updates": {"sms": True}},
        locale=locale,
        updated_at=datetime.now(UTC),
    )


async def publish_audience(publisher: Publisher, customers: list[str], **kw: Any) -> None:
    """Publish snapshots for customers to contacts.preferences.v1."""
    futures = []
    for cid in customers:
        headers, value = encode(CONTACT_PREFERENCES, preferences(cid, **kw), source="test")
        futures.append(
            await publisher.producer.send(
                CONTACT_PREFERENCES.topic.name(publisher.namespace),
                value,
                key=cid.encode(),
                headers=headers,
            )
        )
    for f in futures:
        await f
