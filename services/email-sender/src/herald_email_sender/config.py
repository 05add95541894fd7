"""email-sender settings (HERALD_EMAIL_SENDER_*)."""

from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings


class Settings(ServiceSettings):
    """email-sender settings."""

    model_config = SettingsConfigDict(
        env_prefix="HERALD_EMAIL_SENDER_", extra="ignore", frozen=True
    )

    port: int = 8106
    mongo_db: str = "herald_email_sender"
