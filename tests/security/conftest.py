"""A whole stack whose services know three keys: every scope, read-only, and no scope at all."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos.scenario import free_port_offset

from herald_devstack import SERVICES, Stack, StackConfig
from herald_kit import hash_key
from support import TEST_KEY, api_keys

ROOT = Path(__file__).resolve().parents[2]
NO_SCOPE_KEY = "test-key-no-scopes"


@pytest.fixture
def keyed_stack(infra: dict[str, str], namespace: str) -> Iterator[Stack]:
    """Every service, each accepting the test keys plus one key that holds no scope."""
    keys = [*api_keys(), {"name": "nobody", "hash": hash_key(NO_SCOPE_KEY), "scopes": []}]
    config = StackConfig(
        kafka_bootstrap=infra["kafka"],
        mongo_uri=infra["mongo"],
        namespace=namespace,
        db_suffix="_" + namespace.strip("."),
        port_offset=free_port_offset(),
        api_key=TEST_KEY,
        log_dir=ROOT / ".cache" / "logs" / "security",
        extra_env={f"{s.env_prefix}API_KEYS": json.dumps(keys) for s in SERVICES},
    )
    s = Stack(config)
    try:
        s.start(timeout=120)
        yield s
    finally:
        s.stop()
