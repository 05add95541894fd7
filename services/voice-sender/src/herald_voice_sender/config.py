"""voice-sender settings (HERALD_VOICE_SENDER_*)."""

from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings


class Settings(ServiceSettings):
    """voice-sender settings."""

    model_config = SettingsConfigDict(
        env_prefix="HERALD_VOICE_SENDER_", extra="ignore", frozen=True
    )

    port: int = 8107
    mongo_db: str = "herald_voice_sender"
