"""Run a service's app under uvicorn (`python -m herald_<service>`)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TypeVar

import uvicorn
from fastapi import FastAPI

from herald_kit._settings import GC_THRESHOLD, ServiceSettings

S = TypeVar("S", bound=ServiceSettings)


def tune_gc(threshold: int = GC_THRESHOLD) -> None:
    """Keep the cyclic garbage collector off the hot path.

    With Python's defaults (a young collection every 700 allocations) a dispatcher holding a
    thousand decisions in flight collected 800 times in a 3.8 s benchmark window, for 0.84 s;
    with a threshold of 20,000 it collected 28 times, for 0.23 s. What exists at start-up (the
    modules, schemas and compiled templates) is frozen, so older-generation collections never
    walk it again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, 20, 20)


def serve(create_app: Callable[[S], FastAPI], settings: S) -> None:
    """Serve the app built from settings until SIGINT/SIGTERM; logs go through the kit."""
    app = create_app(settings)
    tune_gc(settings.gc_threshold)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_graceful_shutdown=10,
    )
