"""The voice-sender service app."""

from __future__ import annotations

from fastapi import FastAPI

from herald_kit import Runtime, build_app
from herald_voice_sender.config import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the voice-sender app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "voice-sender")
    return build_app(
        settings,
        runtime,
        title="Herald voice-sender",
        description="Places IVR callback calls through Twilio Voice.",
    )
