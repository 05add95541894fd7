"""The dispatcher service app."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from aiokafka import ConsumerRecord
from fastapi import FastAPI

from herald_contracts import Topics, utc_now
from herald_dispatcher.adapters.store import Decisions, Ledger, Views
from herald_dispatcher.api import explain
from herald_dispatcher.config import Settings
from herald_dispatcher.messaging.catchup import CatchUp
from herald_dispatcher.messaging.handlers import handle_outcome, handle_request, handle_view
from herald_dispatcher.policy import Dispatcher
from herald_kit import Runtime, build_app

VIEW_TOPICS = [Topics.CONTACTS_PREFERENCES, Topics.CASES_STATE]


def create_app(
    settings: Settings | None = None, *, clock: Callable[[], datetime] = utc_now
) -> FastAPI:
    """Build the dispatcher app; connections open in the lifespan.

    `clock` is the dispatcher's notion of now (tests pin it to exercise quiet hours).
    """
    settings = settings or Settings()
    runtime = Runtime(settings, "dispatcher", clock=clock)
    # Rows per request or message, forgotten once no redelivery can ask for them (docs/
    # operations.md#data-retention); decisions, the explain API's answers, are kept longer.
    for collection in ("request_claims", "attempts", "request_outcomes", "last_contents"):
        runtime.forget_old(collection)
    runtime.forget_old("decisions", keep=timedelta(seconds=settings.decision_retention_seconds))
    app = build_app(
        settings,
        runtime,
        title="Herald dispatcher",
        description="Decides whether, when, on which channel and with what words to contact.",
        routers=[explain.router],
    )
    catchup = CatchUp(settings, "dispatcher-views", VIEW_TOPICS)
    app.state.catchup = catchup

    @runtime.on_start
    async def _wire() -> None:
        app.state.views = Views(runtime.db)
        app.state.decisions = Decisions(runtime.db)
        app.state.ledger = Ledger(runtime.db)
        await app.state.decisions.ensure_indexes()
        await app.state.ledger.ensure_indexes()
        app.state.dispatcher = Dispatcher(
            app.state.views,
            app.state.decisions,
            app.state.ledger,
            runtime.producer,
            settings,
            clock=clock,
        )
        await catchup.start()

    runtime.ready_check("views-caught-up", catchup.caught_up)

    async def on_view(record: ConsumerRecord[bytes, bytes]) -> None:
        await handle_view(app.state.views, settings.topic_namespace, record)

    async def on_request(record: ConsumerRecord[bytes, bytes]) -> None:
        await catchup.wait(settings.view_catchup_seconds)
        await handle_request(app.state.dispatcher, record)

    async def on_outcome(record: ConsumerRecord[bytes, bytes]) -> None:
        await handle_outcome(app.state.dispatcher, settings.topic_namespace, record)

    # Every consumer runs a polled batch concurrently across keys, one key's records in order:
    # a customer's or case's snapshots (newest version wins), a customer's requests (caps,
    # supersession and the request ledger are per customer), a customer's statuses and replies.
    runtime.consume(
        "dispatcher-views", VIEW_TOPICS, on_view, concurrency=settings.request_concurrency
    )
    runtime.consume(
        "dispatcher",
        [Topics.CONTACT_REQUESTS],
        on_request,
        concurrency=settings.request_concurrency,
    )
    runtime.consume(
        "dispatcher-outcomes",
        [Topics.DELIVERY_STATUS, Topics.ENGAGEMENT_REPLIES],
        on_outcome,
        concurrency=settings.request_concurrency,
    )
    return app
