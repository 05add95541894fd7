"""The scheduler service app."""

from __future__ import annotations

from datetime import timedelta

from aiokafka import ConsumerRecord
from fastapi import FastAPI

from herald_contracts import ContactPreferences, Topics
from herald_kit import Runtime, build_app, decode
from herald_scheduler.adapters.audience import ContactView, FireRepository, Lease
from herald_scheduler.adapters.campaigns import CampaignRepository
from herald_scheduler.adapters.history import ContactHistory
from herald_scheduler.adapters.pacing import SendPace
from herald_scheduler.adapters.stats import StatsRepository
from herald_scheduler.adapters.timers import TimerRepository
from herald_scheduler.api import campaigns
from herald_scheduler.config import Settings
from herald_scheduler.messaging.fanout import FanOut
from herald_scheduler.messaging.matcher import Matcher
from herald_scheduler.messaging.schedules import ScheduleRunner
from herald_scheduler.messaging.stats import StatsConsumer
from herald_scheduler.messaging.timers import TimerService


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the scheduler app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "scheduler")
    # Statistics guards, the message-to-campaign rows and the replies parked before their
    # message's first status: one or more per message, forgotten once no redelivery can ask for
    # them (docs/operations.md#data-retention).
    for collection in ("stats_seen", "stats_messages", "stats_parked"):
        runtime.forget_old(collection)
    app = build_app(
        settings,
        runtime,
        title="Herald scheduler",
        description="Campaigns, triggers and durable time.",
        routers=[campaigns.router],
    )

    @runtime.on_start
    async def _wire() -> None:
        db = runtime.db
        app.state.campaigns = CampaignRepository(db)
        await app.state.campaigns.ensure_indexes()
        timers = TimerRepository(db)
        await timers.ensure_indexes()
        await timers.index_pending_keys()
        fires = FireRepository(db)
        await fires.ensure_indexes()
        app.state.contacts = ContactView(db, dry_run_limit=settings.dry_run_limit)
        app.state.fires = fires
        app.state.timers = timers
        stats = StatsRepository(
            db, guards_kept=timedelta(seconds=settings.ledger_retention_seconds)
        )
        app.state.stats = stats
        history = ContactHistory(db)
        app.state.history = history
        app.state.stats_consumer = StatsConsumer(
            stats, settings.topic_namespace, campaigns=app.state.campaigns, history=history
        )
        pace = SendPace(db)
        app.state.matcher = Matcher(app.state.campaigns, timers, runtime.producer, stats, pace)

        async def campaign_status(campaign_id: str) -> str:
            status: str = (await app.state.campaigns.get(campaign_id))["status"]
            return status

        app.state.timer_service = TimerService(
            timers,
            runtime.producer,
            stats,
            poll_seconds=settings.timer_poll_seconds,
            lease_seconds=settings.timer_lease_seconds,
            campaign=app.state.campaigns.get,
            pace=pace,
        )
        app.state.timer_service.start()

        app.state.schedules = ScheduleRunner(
            campaigns=app.state.campaigns,
            fires=fires,
            fanout=FanOut(
                settings,
                fires,
                runtime.producer,
                batch=settings.fanout_batch,
                stats=stats,
                status=campaign_status,
                read_ahead_records=settings.fanout_read_ahead_records,
            ),
            lease=Lease(
                db,
                "schedules",
                settings.instance_id,
                timedelta(seconds=settings.lease_ttl_seconds),
            ),
            mongo_uri=settings.mongo_uri.get_secret_value(),
            mongo_db=settings.mongo_db,
            tick_seconds=settings.lease_tick_seconds,
        )
        app.state.schedules.start()

    @runtime.on_stop
    async def _unwire() -> None:
        await app.state.schedules.stop()
        await app.state.timer_service.stop()

    async def on_record(record: ConsumerRecord[bytes, bytes]) -> None:
        if record.topic == Topics.CONTACTS_PREFERENCES.name(settings.topic_namespace):
            if record.value is None:
                if record.key:
                    await app.state.contacts.erase(record.key.decode())
                return
            prefs = decode(record, ContactPreferences).data
            await app.state.contacts.upsert(prefs.model_dump(mode="json"))
            return
        await app.state.matcher.handle(record)

    async def on_timer(record: ConsumerRecord[bytes, bytes]) -> None:
        await app.state.timer_service.handle(record)

    # Keyed records (a case, a customer) are matched concurrently across keys, in order within one.
    runtime.consume(
        "scheduler",
        [Topics.CASES_CHANGES, Topics.CONTACTS_PREFERENCES],
        on_record,
        concurrency=settings.match_concurrency,
    )

    async def on_outcome(record: ConsumerRecord[bytes, bytes]) -> None:
        await app.state.stats_consumer.handle(record)

    runtime.consume("scheduler-timers", [Topics.TIMERS_REQUESTS], on_timer)
    # Counting is commutative and guarded per status: many customers' statuses at once.
    runtime.consume(
        "scheduler-stats",
        [Topics.DELIVERY_STATUS, Topics.ENGAGEMENT_REPLIES],
        on_outcome,
        concurrency=settings.match_concurrency,
    )
    return app
