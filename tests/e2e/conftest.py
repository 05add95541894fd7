"""The whole system as `make run` starts it: every service as its own process."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from herald_devstack import Stack, StackConfig
from support import TEST_KEY

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(infra: dict[str, str], namespace: str) -> Iterator[Stack]:
    """Every service against the real broker and database, isolated by namespace and ports."""
    config = StackConfig(
        kafka_bootstrap=infra["kafka"],
        mongo_uri=infra["mongo"],
        namespace=namespace,
        db_suffix="_" + namespace.strip("."),
        # Below the kernel's ephemeral range (32768+), so no outgoing connection holds a port.
        port_offset=random.randrange(17_000, 24_000, 10),
        api_key=TEST_KEY,
        log_dir=ROOT / ".cache" / "logs" / "e2e",
    )
    s = Stack(config)
    try:
        s.start(timeout=90)
        yield s
    finally:
        s.stop()
