"""The ingest service app."""

from __future__ import annotations

from datetime import timedelta

from aiokafka import ConsumerRecord
from fastapi import FastAPI

from herald_contracts import Topics
from herald_ingest.adapters.repository import CALLBACKS, CaseRepository
from herald_ingest.api import cases, events, status_page
from herald_ingest.config import Settings
from herald_ingest.domain.intake import EventCatalog
from herald_ingest.messaging.inbound import BatchInboundLoop
from herald_ingest.messaging.timeline import handle_timeline
from herald_ingest.processing import Processor
from herald_ingest.sweeper import Sweeper
from herald_kit import Runtime, build_app

# Statuses and replies of this many customers are recorded at once.
TIMELINE_CONCURRENCY = 32
# A status link's call-back count is read for the current day only.
CALLBACKS_KEPT = timedelta(days=2)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ingest app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "ingest")
    catalog = EventCatalog(
        settings.custom_event_types,
        max_time_ahead=timedelta(seconds=settings.max_event_time_ahead_seconds),
    )
    app = build_app(
        settings,
        runtime,
        title="Herald ingest",
        description="Business events in; versioned case state, timeline and status page out.",
        routers=[events.router, cases.router, status_page.router],
    )
    app.state.catalog = catalog
    runtime.forget_old(CALLBACKS, keep=CALLBACKS_KEPT)

    async def not_wired(record: ConsumerRecord[bytes, bytes]) -> None:
        raise RuntimeError("processor not wired")

    inbound = BatchInboundLoop(
        settings,
        runtime.producer,
        "ingest",
        [Topics.EVENTS_INBOUND],
        not_wired,
        batch=settings.consumer_batch,
        catalog=catalog,
    )
    runtime.consumers.append(inbound)

    async def on_activity(record: ConsumerRecord[bytes, bytes]) -> None:
        await handle_timeline(app.state.repo, record)

    # Timeline entries are idempotent by _id and read sorted by time: many customers' entries
    # are written at once, as one insert (CaseRepository.add_timeline).
    runtime.consume(
        "ingest-timeline",
        [Topics.DELIVERY_STATUS, Topics.ENGAGEMENT_REPLIES],
        on_activity,
        concurrency=TIMELINE_CONCURRENCY,
    )

    @runtime.on_start
    async def _wire() -> None:
        repo = CaseRepository(runtime.db)
        await repo.ensure_indexes()
        processor = Processor(
            repo,
            runtime.producer,
            max_batch=settings.consumer_batch,
            max_record_bytes=settings.max_record_bytes,
            publish_wait=settings.publish_wait_seconds,
        )
        app.state.repo = repo
        app.state.processor = processor
        inbound.processor = processor

        async def one(record: ConsumerRecord[bytes, bytes]) -> None:
            from herald_ingest.messaging.inbound import handle_inbound

            await handle_inbound(processor, record, catalog)

        inbound.handler = one  # the per-record fallback when a whole batch fails
        app.state.sweeper = Sweeper(
            repo,
            processor,
            retention_seconds=settings.dedupe_retention_seconds,
            recover_after_seconds=settings.recover_after_seconds,
            interval_seconds=settings.sweep_interval_seconds,
        )
        app.state.sweeper.start()

    @runtime.on_stop
    async def _unwire() -> None:
        await app.state.sweeper.stop()

    return app
