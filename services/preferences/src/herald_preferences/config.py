"""Preferences settings (HERALD_PREFERENCES_*)."""

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings


class Settings(ServiceSettings):
    """Preferences service settings."""

    model_config = SettingsConfigDict(env_prefix="HERALD_PREFERENCES_", extra="ignore", frozen=True)

    port: int = 8101
    mongo_db: str = "herald_preferences"
    default_region: str = Field(
        default="GB", description="Region for phone numbers given without a country code."
    )
    link_max_age_seconds: int = Field(
        default=30 * 24 * 3600, ge=60, description="How long a preference-centre link works."
    )
    republish_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often contacts left unpublished are flushed."
    )
    idempotency_stale_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A pending Idempotency-Key claim older than this is taken over.",
    )
    idempotency_retention_seconds: int = Field(
        default=86_400,
        ge=3_600,
        description=(
            "How long an Idempotency-Key's response is kept to replay (it holds the contact as "
            "written); a retry later than that runs as a new request."
        ),
    )
    import_max_rows: int = Field(default=10_000, ge=1, description="Rows per bulk import request.")
    pseudonym_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Keys the hash that replaces an erased customer's id in the ledger "
        "(falls back to the link secret).",
    )
    topics: list[str] = Field(
        default_factory=lambda: ["service-updates", "appointments", "billing", "marketing"],
        description="Topics the preference centre offers.",
    )
