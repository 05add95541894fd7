"""The preferences service app."""

from __future__ import annotations

from datetime import timedelta

from aiokafka import ConsumerRecord
from fastapi import FastAPI

from herald_contracts import Topics
from herald_kit import Runtime, build_app
from herald_preferences.adapters.repository import ContactRepository, IdempotencyStore
from herald_preferences.api import centre, contacts
from herald_preferences.api.idempotency import Settlements
from herald_preferences.config import Settings
from herald_preferences.messaging.handlers import PreferenceHandlers
from herald_preferences.messaging.outbox import Outbox

OUTCOME_CONCURRENCY = 16


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the preferences app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "preferences")
    # A key's response (the contact as written) is replayed for a day, as payment APIs do, then
    # forgotten rather than kept for ever (docs/operations.md#data-retention).
    runtime.forget_old(
        "idempotency", keep=timedelta(seconds=settings.idempotency_retention_seconds)
    )
    app = build_app(
        settings,
        runtime,
        title="Herald preferences",
        description="Customers' channels, ranking, consent evidence and quiet hours; the "
        "preference centre; STOP/START; GDPR export and erase.",
        routers=[contacts.router, centre.router],
    )

    async def handle(record: ConsumerRecord[bytes, bytes]) -> None:
        handlers: PreferenceHandlers = app.state.handlers
        await handlers(record)

    # Every SMS brings two statuses, most of them nothing to do here: customers are handled
    # concurrently (one customer's records in order; writes are version-checked), and offsets
    # are committed once a second rather than after every small batch.
    runtime.consume(
        "preferences",
        [Topics.ENGAGEMENT_REPLIES, Topics.DELIVERY_STATUS],
        handle,
        concurrency=OUTCOME_CONCURRENCY,
    )

    @runtime.on_start
    async def _start() -> None:
        repo = ContactRepository(runtime.db)
        await repo.ensure_indexes()
        app.state.repo = repo
        app.state.idempotency = IdempotencyStore(runtime.db)
        app.state.settlements = Settlements()
        app.state.outbox = Outbox(repo, runtime.producer, wait=settings.publish_wait_seconds)
        app.state.handlers = PreferenceHandlers(repo, app.state.outbox, settings.topic_namespace)
        app.state.outbox.start(interval=settings.republish_interval_seconds)

    @runtime.on_stop
    async def _stop() -> None:
        await app.state.outbox.stop()
        await app.state.settlements.stop()

    return app
