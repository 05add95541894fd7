"""Fixtures the integration tests share: a running ingest app; for the scheduler's tests, a
scheduler replica, a publisher onto the test's topics and a reader of the contact requests the
scheduler emits; for the senders' tests, a producer onto the test's topics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from test_scheduler_support import Publisher, Requests, open_publisher, open_requests, scheduler
from twilio_support import producer

from herald_ingest.app import create_app
from herald_kit import EventProducer
from support import ingest_settings, running


@pytest.fixture
def ingest_options() -> dict[str, Any]:
    """Settings the `ingest` fixture adds to the defaults; a test module overrides it."""
    return {}


@pytest.fixture
async def ingest(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    ingest_options: dict[str, Any],
) -> AsyncIterator[httpx.AsyncClient]:
    """An ingest app on the test's topics and database, with a client to its HTTP API."""
    settings = ingest_settings(infra, namespace, db_name("ingest"), **ingest_options)
    async with running(create_app(settings)) as client:
        yield client


@pytest.fixture
async def client(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> AsyncIterator[httpx.AsyncClient]:
    """One scheduler replica on the test's topics and database, with its HTTP client."""
    async with scheduler(infra, namespace, db_name("scheduler")) as replica:
        yield replica


@pytest.fixture
async def publisher(infra: dict[str, str], namespace: str) -> AsyncIterator[Publisher]:
    async with open_publisher(infra, namespace) as p:
        yield p


@pytest.fixture
async def requests(infra: dict[str, str], namespace: str) -> AsyncIterator[Requests]:
    async with open_requests(infra, namespace) as r:
        yield r


@pytest.fixture
async def prod(infra: dict[str, str], namespace: str) -> AsyncIterator[EventProducer]:
    async with producer(infra["kafka"], namespace) as p:
        yield p
