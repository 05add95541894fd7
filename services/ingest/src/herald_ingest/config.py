"""Ingest settings (HERALD_INGEST_*)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings


class Settings(ServiceSettings):
    """Ingest service settings."""

    model_config = SettingsConfigDict(env_prefix="HERALD_INGEST_", extra="ignore", frozen=True)

    port: int = 8102
    mongo_db: str = "herald_ingest"
    max_batch: int = Field(default=500, ge=1, le=10_000)
