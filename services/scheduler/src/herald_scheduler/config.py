"""Scheduler settings (HERALD_SCHEDULER_*)."""

from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings


class Settings(ServiceSettings):
    """Scheduler service settings."""

    model_config = SettingsConfigDict(env_prefix="HERALD_SCHEDULER_", extra="ignore", frozen=True)

    port: int = 8103
    mongo_db: str = "herald_scheduler"
