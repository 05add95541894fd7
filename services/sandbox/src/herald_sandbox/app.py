"""The sandbox app: fake Twilio and its capture API. Off in production."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from herald_kit import Runtime, build_app
from herald_sandbox.adapters.smtp_sink import Mailbox, SmtpSink
from herald_sandbox.api import emails, outbox, page, twilio, twilio_control
from herald_sandbox.config import Settings
from herald_sandbox.domain.store import Outbox


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the sandbox app."""
    settings = settings or Settings()
    runtime = Runtime(settings, "sandbox", uses_kafka=False)
    app = build_app(
        settings,
        runtime,
        title="Herald sandbox",
        description="Stand-in for Twilio and an SMTP relay in development and tests.",
        routers=[twilio.router, twilio_control.router, outbox.router, emails.router, page.router],
    )
    app.state.outbox = Outbox()
    app.state.tasks = set[asyncio.Task[None]]()
    app.state.mailbox = Mailbox()
    app.state.smtp = SmtpSink(app.state.mailbox, host=settings.host, port=settings.smtp_port)
    runtime.on_start(app.state.smtp.start)
    runtime.on_stop(app.state.smtp.stop)
    twilio.install(app, runtime, settings)
    return app
