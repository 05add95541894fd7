"""schemas/ is generated from the models and committed; a v1 schema only grows compatibly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from herald_contracts import ALL_EVENT_TYPES
from herald_contracts._schemagen import render_all as render_events
from herald_devstack._openapi import render_all as render_openapi

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"


@pytest.mark.parametrize("rel,text", sorted({**render_events(), **render_openapi()}.items()))
def test_committed_schema_matches_the_models(rel: str, text: str) -> None:
    path = SCHEMAS / rel
    assert path.exists(), f"{rel} missing: run `make schemas` and commit"
    assert path.read_text(encoding="utf-8") == text, f"{rel} drifted: run `make schemas`"


def test_no_stale_event_schema_files() -> None:
    expected = {f"{et.schema_name}" for et in ALL_EVENT_TYPES}
    present = {p.name for p in (SCHEMAS / "events").glob("*.json")}
    assert present == expected


def _properties(schema: dict[str, Any]) -> tuple[set[str], set[str]]:
    return set(schema.get("properties", {})), set(schema.get("required", []))


def _committed_at(rev: str, rel: str) -> dict[str, Any] | None:
    try:
        out = subprocess.run(  # noqa: S603
            ["git", "show", f"{rev}:schemas/{rel}"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    loaded: dict[str, Any] = json.loads(out)
    return loaded


@pytest.mark.parametrize("et", ALL_EVENT_TYPES, ids=lambda e: e.schema_name)
def test_v1_schemas_only_grow_compatibly(et: Any) -> None:
    """Against the first committed version: no property removed, nothing newly required."""
    rel = f"events/{et.schema_name}"
    first = subprocess.run(  # noqa: S603
        ["git", "log", "--diff-filter=A", "--format=%H", "--", f"schemas/{rel}"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if not first:
        pytest.skip(f"{rel} is new in this change: nothing older to compare with")
    old = _committed_at(first[-1], rel)
    assert old is not None
    new = json.loads((SCHEMAS / rel).read_text())
    old_props, old_req = _properties(old)
    new_props, new_req = _properties(new)
    assert old_props <= new_props, f"removed: {old_props - new_props}"
    assert new_req <= old_req, f"newly required: {new_req - old_req}"
