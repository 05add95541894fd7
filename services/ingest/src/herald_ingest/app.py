"""The ingest service app."""

from __future__ import annotations

from aiokafka import ConsumerRecord
from fastapi import FastAPI

from herald_contracts import Topics
from herald_ingest.adapters.repository import CaseRepository
from herald_ingest.api import cases, events
from herald_ingest.config import Settings
from herald_ingest.messaging.inbound import handle_inbound
from herald_ingest.processing import Processor
from herald_kit import Runtime, build_app


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ingest app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "ingest")
    app = build_app(
        settings,
        runtime,
        title="Herald ingest",
        description="Business events in; versioned case state, timeline and status page out.",
        routers=[events.router, cases.router],
    )

    async def handle(record: ConsumerRecord[bytes, bytes]) -> None:
        await handle_inbound(app.state.processor, record)

    @runtime.on_start
    async def _wire() -> None:
        app.state.repo = CaseRepository(runtime.db)
        await app.state.repo.ensure_indexes()
        app.state.processor = Processor(app.state.repo, runtime.producer)

    runtime.consume("ingest", [Topics.EVENTS_INBOUND], handle)
    return app
