"""Helpers for the Twilio-side tests: serve apps over real HTTP, publish and read events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import uvicorn
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI
from pydantic import BaseModel

from herald_contracts import EventType, OutboundSms, OutboundVoice, utc_now
from herald_kit import EventProducer, ServiceSettings, decode
from support import free_port

SANDBOX_SID = "AC00000000000000000000000000000000"
SANDBOX_TOKEN = "sandbox-auth-token"


@asynccontextmanager
async def serving(app: FastAPI, port: int) -> AsyncIterator[str]:
    """Serve an app (lifespan included) on a real port: Twilio's callbacks need HTTP."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server stopped before starting")
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def sandbox_serving(**settings: Any) -> AsyncIterator[str]:
    """The sandbox on a free port with the tests' Twilio credentials and prompt callbacks; its
    base URL. Keyword arguments override its settings."""
    from herald_sandbox.app import create_app
    from herald_sandbox.config import Settings

    port = free_port()
    config = {
        "port": port,
        "mongo_db": "",
        "twilio_account_sid": SANDBOX_SID,
        "twilio_auth_token": SANDBOX_TOKEN,
        "callback_delay_seconds": 0.01,
        **settings,
    }
    async with serving(create_app(Settings(**config)), port) as url:
        yield url


def outbound_sms(to: str, body: str | None = None, **kw: Any) -> OutboundSms:
    """An OutboundSms with unique ids."""
    mid = kw.pop("message_id", f"msg-{uuid.uuid4().hex[:12]}")
    return OutboundSms(
        message_id=mid,
        request_id=kw.pop("request_id", f"req-{uuid.uuid4().hex[:8]}"),
        campaign_id=kw.pop("campaign_id", "camp-1"),
        customer_id=kw.pop("customer_id", f"cust-{uuid.uuid4().hex[:8]}"),
        case_id=kw.pop("case_id", f"case-{uuid.uuid4().hex[:8]}"),
        to=to,
        body=body or f"Your case is booked ({mid})",
        segments=1,
        encoding="GSM-7",
        created_at=utc_now(),
        expires_at=kw.pop("expires_at", utc_now() + timedelta(hours=1)),
        **kw,
    )


def outbound_voice(to: str, say: str, language: str = "en-GB", **kw: Any) -> OutboundVoice:
    """An OutboundVoice with unique ids."""
    mid = kw.pop("message_id", f"call-{uuid.uuid4().hex[:12]}")
    return OutboundVoice(
        message_id=mid,
        request_id=f"req-{uuid.uuid4().hex[:8]}",
        campaign_id="camp-1",
        customer_id=kw.pop("customer_id", f"cust-{uuid.uuid4().hex[:8]}"),
        case_id=kw.pop("case_id", f"case-{uuid.uuid4().hex[:8]}"),
        to=to,
        say=say,
        language=language,
        created_at=utc_now(),
        expires_at=utc_now() + timedelta(hours=1),
        **kw,
    )


@asynccontextmanager
async def producer(kafka: str, namespace: str) -> AsyncIterator[EventProducer]:
    """An event producer under a namespace."""
    p = EventProducer(ServiceSettings(kafka_bootstrap=kafka, topic_namespace=namespace), "tests")
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


class Collector:
    """Reads one event type's topic from the start, in the background."""

    def __init__(self, kafka: str, namespace: str, et: EventType) -> None:
        self.kafka = kafka
        self.topic = et.topic.name(namespace)
        self.model = et.model
        self.items: list[Any] = []
        self.ids: list[str] = []  # each item's event id
        self.traces: list[str | None] = []  # each item's trace id
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> Collector:
        self._consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.kafka,
            group_id=f"collector-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for r in records:
                    event = decode(r, self.model)
                    self.ids.append(event.id)
                    self.traces.append(event.trace.trace_id if event.trace else None)
                    self.items.append(event.data)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._consumer is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self._consumer.stop()

    def where(self, **fields: Any) -> list[Any]:
        """Collected events whose fields equal the given values."""
        return [i for i in self.items if all(getattr(i, k) == v for k, v in fields.items())]

    def traces_where(self, **fields: Any) -> list[str | None]:
        """The trace ids of the collected events whose fields equal the given values."""
        return [
            trace
            for item, trace in zip(self.items, self.traces, strict=True)
            if all(getattr(item, k) == v for k, v in fields.items())
        ]


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON form of a model."""
    return model.model_dump(mode="json")
