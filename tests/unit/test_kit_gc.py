"""The collector settings every service starts with (serve() → tune_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from herald_kit import ServiceSettings, serve
from herald_kit import _serve as serve_module


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_serve_freezes_start_up_objects_and_applies_the_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def fake_run(app: FastAPI, **options: Any) -> None:
        # What the server would run with, observed at the moment it starts.
        seen["threshold"] = gc.get_threshold()[0]
        seen["frozen"] = gc.get_freeze_count()
        seen["app"] = app

    monkeypatch.setattr(serve_module.uvicorn, "run", fake_run)
    gc.unfreeze()
    serve(lambda s: FastAPI(title="probe"), ServiceSettings(gc_threshold=12_345))
    assert seen["threshold"] == 12_345
    assert seen["frozen"] > 0  # the app and everything imported are out of the collector's way
    assert seen["app"].title == "probe"


def test_a_threshold_below_pythons_default_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        ServiceSettings(gc_threshold=10)
    assert info.value.errors()[0]["loc"] == ("gc_threshold",)
