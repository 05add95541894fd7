"""Fixtures the scheduler's integration tests share: a publisher onto the test's topics and a
reader of the contact requests the scheduler emits."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from test_scheduler_support import Publisher, Requests, open_publisher, open_requests


@pytest.fixture
async def publisher(infra: dict[str, str], namespace: str) -> AsyncIterator[Publisher]:
    async with open_publisher(infra, namespace) as p:
        yield p


@pytest.fixture
async def requests(infra: dict[str, str], namespace: str) -> AsyncIterator[Requests]:
    async with open_requests(infra, namespace) as r:
        yield r
