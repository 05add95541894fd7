"""Preferences settings (HERALD_PREFERENCES_*)."""

from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings


class Settings(ServiceSettings):
    """Preferences service settings."""

    model_config = SettingsConfigDict(env_prefix="HERALD_PREFERENCES_", extra="ignore", frozen=True)

    port: int = 8101
    mongo_db: str = "herald_preferences"
    default_region: str = "GB"
