"""SMS sender settings (HERALD_SMS_SENDER_*)."""

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings


class Settings(ServiceSettings):
    """SMS sender settings; credentials come from a Kubernetes secret or the environment."""

    model_config = SettingsConfigDict(env_prefix="HERALD_SMS_SENDER_", extra="ignore", frozen=True)

    port: int = 8105
    mongo_db: str = "herald_sms_sender"
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_base_url: str | None = Field(
        default=None, description="Override Twilio's API host (the sandbox in development)."
    )
    from_number: str = "+15005550006"
    messaging_service_sid: str | None = None
