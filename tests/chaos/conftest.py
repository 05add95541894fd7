"""A whole stack for a chaos run, with its logs kept for the log scan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos.scenario import free_port_offset

from herald_devstack import Stack, StackConfig
from support import TEST_KEY

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def chaos_stack(infra: dict[str, str], namespace: str) -> Iterator[Stack]:
    """Every service against the real broker and database, isolated by namespace and ports."""
    config = StackConfig(
        kafka_bootstrap=infra["kafka"],
        mongo_uri=infra["mongo"],
        namespace=namespace,
        db_suffix="_" + namespace.strip("."),
        port_offset=free_port_offset(),
        api_key=TEST_KEY,
        log_dir=ROOT / ".cache" / "logs" / "chaos",
    )
    s = Stack(config)
    try:
        s.start(timeout=120)
        yield s
    finally:
        s.stop()
