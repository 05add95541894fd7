"""The preferences service app."""

from __future__ import annotations

from fastapi import FastAPI

from herald_kit import Runtime, build_app
from herald_preferences.adapters.repository import ContactRepository
from herald_preferences.api import contacts
from herald_preferences.config import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the preferences app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "preferences")
    app = build_app(
        settings,
        runtime,
        title="Herald preferences",
        description="Customers' channels, ranking, consent evidence and quiet hours.",
        routers=[contacts.router],
    )

    @runtime.on_start
    async def _indexes() -> None:
        app.state.repo = ContactRepository(runtime.db)
        await app.state.repo.ensure_indexes()

    return app
