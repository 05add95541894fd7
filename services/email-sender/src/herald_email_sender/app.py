"""The email-sender service app."""

from __future__ import annotations

from fastapi import FastAPI

from herald_email_sender.config import Settings
from herald_kit import Runtime, build_app


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the email-sender app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "email-sender")
    return build_app(
        settings,
        runtime,
        title="Herald email-sender",
        description="Sends email through an SMTP relay.",
    )
