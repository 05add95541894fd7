"""A whole stack for a chaos run, with its logs kept for the log scan."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chaos.scenario import whole_stack

from herald_devstack import Stack


@pytest.fixture
def chaos_stack(infra: dict[str, str], namespace: str) -> Iterator[Stack]:
    """Every service against the real broker and database, isolated by namespace and ports."""
    with whole_stack(infra, namespace, "chaos") as s:
        yield s
