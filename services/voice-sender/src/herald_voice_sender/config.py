"""voice-sender settings (HERALD_VOICE_SENDER_*)."""

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings


class Settings(ServiceSettings):
    """voice-sender settings; credentials come from a Kubernetes secret or the environment."""

    model_config = SettingsConfigDict(
        env_prefix="HERALD_VOICE_SENDER_", extra="ignore", frozen=True
    )

    port: int = 8107
    mongo_db: str = "herald_voice_sender"
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_base_url: str | None = Field(
        default=None, description="Override Twilio's API host (the sandbox in development)."
    )
    twilio_timeout_seconds: float = Field(default=10.0, gt=0)
    caller_id: str = Field(default="+15005550006", description="The number calls come from.")
    contact_centre_number: str = Field(
        default="+15005550009", description="Where 'talk to an agent' and call-backs connect."
    )
    machine_detection: bool = True
    rate_per_second: float = Field(
        default=1.0,
        ge=0,
        description="Calls per second per caller id, all replicas together; 0 = no pacing.",
    )
    rate_burst: int = Field(default=1, ge=1)
    concurrency: int = Field(default=16, ge=1, le=1000)
    send_attempts: int = Field(default=5, ge=1, le=50)
    send_backoff_seconds: float = Field(default=0.5, gt=0)
    send_backoff_cap_seconds: float = Field(default=30.0, gt=0)
    breaker_threshold: int = Field(default=10, ge=1)
    breaker_cooldown_seconds: float = Field(default=10.0, gt=0)
    calling_hours_start: str = Field(
        default="08:00",
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        description="Legal calling hours (local time of the number called) for call-backs.",
    )
    calling_hours_end: str = Field(default="21:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    callback_max_defer_hours: float = Field(
        default=24.0,
        gt=0,
        description="A call-back with no campaign window of its own is placed within this.",
    )
    opt_out_hold_seconds: float = Field(
        default=86400.0,
        ge=0,
        description=(
            "A stop chosen on a call also stops the calls the dispatcher hands over up to this "
            "long after it (before preferences and the dispatcher have heard of it)."
        ),
    )
