"""Ingest settings (HERALD_INGEST_*)."""

from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from herald_kit import REPLAY_WINDOW, ServiceSettings


class Settings(ServiceSettings):
    """Ingest service settings."""

    model_config = SettingsConfigDict(env_prefix="HERALD_INGEST_", extra="ignore", frozen=True)

    port: int = 8102
    mongo_db: str = "herald_ingest"
    max_batch: int = Field(default=500, ge=1, le=10_000)
    consumer_batch: int = Field(
        default=2000,
        ge=1,
        le=10_000,
        description="Records per poll of events.inbound.v1. A poll's events are applied with a "
        "few round trips per partition however many they are, so a large batch is what keeps up "
        "with a backlog; when traffic is light a poll returns what is there at once.",
    )
    max_record_bytes: int = Field(
        default=1_048_576,
        ge=16_384,
        le=1_048_576,
        description="The largest change ingest publishes (a case's state and its event, as a "
        "record): an event that would make its case's change larger is refused naming `data`. "
        "The default is the producer's own limit; set the topics' max.message.bytes if lower.",
    )
    custom_event_types: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Custom event types: type name -> JSON Schema (draft 2020-12) of its data. "
        "The data must carry case_id; other top-level scalars become case attributes.",
    )
    max_event_time_ahead_seconds: int = Field(
        default=300,
        ge=0,
        description="How far ahead of ingest's clock an event's `time` may be (senders' clocks "
        "drift). One further ahead is refused naming `time` (HTTP 422; over Kafka, the DLQ): "
        "it would outrank every later update of its case, which the projection orders by time.",
    )
    dedupe_retention_seconds: int = Field(
        default=int(REPLAY_WINDOW.total_seconds()),
        ge=int(REPLAY_WINDOW.total_seconds()),
        description=(
            "How long a seen (source, id) is remembered: at least as long as the topic can hold "
            "a record (7 days, and up to 7 more until its segment rolls), so an event read again "
            "from the topic is still known; a shorter value is refused."
        ),
    )
    recover_after_seconds: int = Field(
        default=60, ge=1, description="A claimed event not finished after this is applied again."
    )
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    status_link_max_age_seconds: int = Field(
        default=14 * 24 * 3600, ge=60, description="How long a customer's status link works."
    )
    status_callbacks_per_day: int = Field(
        default=3,
        ge=1,
        le=50,
        description="How many call-backs one status link may ask for in a day (UTC): each is a "
        "call Herald places, so whoever holds a link cannot have it call without end. A form "
        "sent twice counts once.",
    )
