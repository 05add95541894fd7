"""SMS sender settings (HERALD_SMS_SENDER_*)."""

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from herald_contracts import Intent
from herald_kit import ServiceSettings
from herald_sms_sender.domain.keywords import DEFAULT_REPLIES


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
    twilio_timeout_seconds: float = Field(default=10.0, gt=0)
    from_number: str = "+15005550006"
    messaging_service_sid: str | None = None
    rate_per_second: float = Field(
        default=0.0,
        ge=0,
        description="Sends per second per sender identity, all replicas together; 0 = no pacing.",
    )
    rate_burst: int = Field(default=1, ge=1, description="Sends allowed back to back when idle.")
    # A message spends most of its time waiting (the ledger's writes, the provider, the status
    # publish): at 64 the sender capped the e2e benchmark near 185 SMS/s with the CPU to spare.
    concurrency: int = Field(
        default=200,
        ge=1,
        le=1000,
        description="Messages in flight (at most the consumer batch, 200 by default).",
    )
    send_attempts: int = Field(default=6, ge=1, le=50)
    send_backoff_seconds: float = Field(default=0.5, gt=0)
    send_backoff_cap_seconds: float = Field(default=30.0, gt=0)
    breaker_threshold: int = Field(default=20, ge=1)
    breaker_cooldown_seconds: float = Field(default=5.0, gt=0)
    brand: str = "Herald"
    help_text: str = Field(
        default="{brand}: updates about your case. Help: {contact}. Reply STOP to opt out.",
        description="The HELP answer; {brand} and {contact} are filled in.",
    )
    help_contact: str = "support@example.com"
    reply_keywords: dict[str, Intent] = Field(
        default_factory=lambda: dict(DEFAULT_REPLIES),
        description="Campaign reply codes and what they mean.",
    )
