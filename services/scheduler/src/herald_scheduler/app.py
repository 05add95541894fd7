"""The scheduler service app."""

from __future__ import annotations

from aiokafka import ConsumerRecord
from fastapi import FastAPI

from herald_contracts import Topics
from herald_kit import Runtime, build_app
from herald_scheduler.adapters.campaigns import CampaignRepository
from herald_scheduler.api import campaigns
from herald_scheduler.config import Settings
from herald_scheduler.messaging.matcher import Matcher


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the scheduler app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "scheduler")
    app = build_app(
        settings,
        runtime,
        title="Herald scheduler",
        description="Campaigns, triggers and durable time.",
        routers=[campaigns.router],
    )

    @runtime.on_start
    async def _wire() -> None:
        app.state.campaigns = CampaignRepository(runtime.db)
        await app.state.campaigns.ensure_indexes()
        app.state.matcher = Matcher(app.state.campaigns, runtime.producer)

    async def on_change(record: ConsumerRecord[bytes, bytes]) -> None:
        await app.state.matcher.handle(record)

    runtime.consume("scheduler", [Topics.CASES_CHANGES], on_change)
    return app
