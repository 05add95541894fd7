"""Sandbox settings (HERALD_SANDBOX_*)."""

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings


class Settings(ServiceSettings):
    """The fake providers' credentials and behaviour."""

    model_config = SettingsConfigDict(env_prefix="HERALD_SANDBOX_", extra="ignore", frozen=True)

    port: int = 8100
    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_auth_token: SecretStr = SecretStr("sandbox-auth-token")
    callback_delay_seconds: float = 0.05
    smtp_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="SMTP sink port; 0 picks a free one (devstack sets it).",
    )
    # Twilio side (runtime-changeable through POST /sandbox/api/twilio/behaviour).
    twilio_rate_per_number: float = 0.0
    twilio_sms_webhook_url: str = ""
    twilio_callbacks: bool = True
    twilio_enforce_opt_out: bool = Field(
        default=True, description="Refuse (21610) numbers that texted STOP, as Twilio does."
    )
