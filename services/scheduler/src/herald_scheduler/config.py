"""Scheduler settings (HERALD_SCHEDULER_*)."""

import uuid

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings
from herald_kit.contact_policy import ContactPolicySettings


class Settings(ServiceSettings, ContactPolicySettings):
    """Scheduler service settings."""

    model_config = SettingsConfigDict(env_prefix="HERALD_SCHEDULER_", extra="ignore", frozen=True)

    port: int = 8103
    mongo_db: str = "herald_scheduler"
    instance_id: str = Field(
        default_factory=lambda: uuid.uuid4().hex[:12],
        description="This replica's name in the schedule lease.",
    )
    timer_poll_seconds: float = Field(default=0.5, gt=0, description="Idle wait between polls.")
    timer_lease_seconds: float = Field(
        default=30, gt=0, description="A claimed timer is fired again after this if not settled."
    )
    lease_ttl_seconds: float = Field(
        default=10, gt=0, description="A schedule leader that stops renewing loses it after this."
    )
    lease_tick_seconds: float = Field(default=2, gt=0, description="Lease renewal interval.")
    fanout_batch: int = Field(default=5000, ge=1, le=50_000)
    fanout_read_ahead_records: int = Field(
        default=200_000,
        ge=0,
        description=(
            "A fire over at least this many audience records (the compacted topic's, older "
            "snapshots included) reads the next partition in a second process while publishing "
            "one; 0 never does."
        ),
    )
    match_concurrency: int = Field(
        # 16 kept the matcher waiting on its own database writes behind the stats consumer's:
        # at 200 events/s the scheduler hop took 2.5 s; at 64, 64 ms.
        default=64,
        ge=1,
        le=256,
        description=(
            "Cases matched at once from a polled batch of cases.changes (one case's changes, "
            "and one customer's snapshots, stay in order)."
        ),
    )
    dry_run_limit: int = Field(default=500, ge=1, le=10_000)
