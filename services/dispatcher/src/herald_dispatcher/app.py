"""The dispatcher service app."""

from __future__ import annotations

from aiokafka import ConsumerRecord
from fastapi import FastAPI

from herald_contracts import Topics
from herald_dispatcher.adapters.store import Decisions, Views
from herald_dispatcher.api import explain
from herald_dispatcher.config import Settings
from herald_dispatcher.messaging.handlers import handle_request, handle_view
from herald_dispatcher.policy import Dispatcher
from herald_kit import Runtime, build_app


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the dispatcher app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "dispatcher")
    app = build_app(
        settings,
        runtime,
        title="Herald dispatcher",
        description="Decides whether, when, on which channel and with what words to contact.",
        routers=[explain.router],
    )

    @runtime.on_start
    async def _wire() -> None:
        app.state.views = Views(runtime.db)
        app.state.decisions = Decisions(runtime.db)
        await app.state.decisions.ensure_indexes()
        app.state.dispatcher = Dispatcher(
            app.state.views,
            app.state.decisions,
            runtime.producer,
            view_wait=settings.view_wait_seconds,
        )

    async def on_view(record: ConsumerRecord[bytes, bytes]) -> None:
        await handle_view(app.state.views, settings.topic_namespace, record)

    async def on_request(record: ConsumerRecord[bytes, bytes]) -> None:
        await handle_request(app.state.dispatcher, record)

    runtime.consume("dispatcher-views", [Topics.CONTACTS_PREFERENCES, Topics.CASES_STATE], on_view)
    runtime.consume("dispatcher", [Topics.CONTACT_REQUESTS], on_request)
    return app
