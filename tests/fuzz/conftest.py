"""A whole stack for the fuzzing runs, logs kept with the others for the log scan."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chaos.scenario import whole_stack

from herald_devstack import Stack


@pytest.fixture
def fuzz_stack(infra: dict[str, str], namespace: str) -> Iterator[Stack]:
    """Every service against the real broker and database, isolated by namespace and ports."""
    with whole_stack(infra, namespace, "fuzz") as s:
        yield s
