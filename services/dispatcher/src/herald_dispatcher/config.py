"""Dispatcher settings (HERALD_DISPATCHER_*)."""

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings
from herald_kit.caps import CapLimits, default_caps

HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"


class LocalWindow(BaseModel):
    """A daily window in the customer's local time, [start, end)."""

    start: str = Field(pattern=HHMM)
    end: str = Field(pattern=HHMM)


def _default_legal() -> dict[str, dict[str, LocalWindow]]:
    # SMS and voice only between 08:00 and 21:00 local unless a region says otherwise.
    window = LocalWindow(start="08:00", end="21:00")
    return {"default": {"sms": window, "voice": window}}


class Settings(ServiceSettings):
    """Dispatcher service settings."""

    model_config = SettingsConfigDict(env_prefix="HERALD_DISPATCHER_", extra="ignore", frozen=True)

    port: int = 8104
    mongo_db: str = "herald_dispatcher"
    view_wait_seconds: float = Field(
        default=5.0, ge=0, description="How long a request waits for a customer's preferences."
    )
    case_wait_seconds: float = Field(
        default=2.0,
        ge=0,
        description="How long a request naming a newer case version waits for the local view.",
    )
    view_catchup_seconds: float = Field(
        default=60.0,
        ge=0,
        description="At start, how long requests wait for the local views to catch up.",
    )
    request_concurrency: int = Field(
        default=32,
        ge=1,
        le=256,
        description=(
            "Customers decided at once from a polled batch of contact requests (one customer's "
            "requests stay in order)."
        ),
    )
    legal_windows: dict[str, dict[str, LocalWindow]] = Field(
        default_factory=_default_legal,
        description=(
            "Legal contact windows per region (ISO 3166 code of the customer's phone number, or "
            "'default') and channel; a channel not listed has no legal window."
        ),
    )
    critical_windows: dict[str, LocalWindow] = Field(
        default_factory=dict,
        description="Windows per channel that service-critical campaigns may use instead.",
    )
    caps: dict[str, CapLimits] = Field(
        default_factory=default_caps,
        description="Frequency caps per priority, per customer across campaigns.",
    )
    status_url: str = Field(
        default="http://127.0.0.1:8102/s/{token}",
        description="The case status page; {token} is a signed 'case-status' link.",
    )
    preferences_url: str = Field(
        default="http://127.0.0.1:8101/p/{token}",
        description="The preference centre; {token} is a signed 'preferences' link.",
    )
