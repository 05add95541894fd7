"""Dispatcher settings (HERALD_DISPATCHER_*)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings


class Settings(ServiceSettings):
    """Dispatcher service settings."""

    model_config = SettingsConfigDict(env_prefix="HERALD_DISPATCHER_", extra="ignore", frozen=True)

    port: int = 8104
    mongo_db: str = "herald_dispatcher"
    view_wait_seconds: float = Field(
        default=5.0, ge=0, description="How long a request waits for a customer's preferences."
    )
