"""Dispatcher settings (HERALD_DISPATCHER_*)."""

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from herald_kit import REPLAY_WINDOW, ServiceSettings
from herald_kit.contact_policy import ContactPolicySettings


class Settings(ServiceSettings, ContactPolicySettings):
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
        description=(
            "How long a request naming a case version newer than the one it carries waits for "
            "the local view."
        ),
    )
    view_catchup_seconds: float = Field(
        default=60.0,
        ge=0,
        description="At start, how long requests wait for the local views to catch up.",
    )
    request_concurrency: int = Field(
        default=1000,
        ge=1,
        le=4096,
        description=(
            "Customers decided at once from a polled batch of contact requests (one customer's "
            "requests stay in order). A decision mostly waits on database round trips, which "
            "concurrent decisions share (see herald_kit's batching), so throughput grows with "
            "it until the CPU is busy: on the benchmark (2 cores, shared) 256 customers at once "
            "from polls of 1,000 gave 339 decisions/s, 1,000 from polls of 3,000 gave 730."
        ),
    )
    consumer_batch: int = Field(
        default=3000,
        ge=1,
        le=10_000,
        description="Records per poll; the concurrency above can only use what a poll holds.",
    )
    repeat_window_seconds: float = Field(
        default=86_400.0,
        ge=0,
        description=(
            "A message whose content is the same as the customer's last message on that channel "
            "about that case, sent less than this long ago, is suppressed (`repeated-content`): "
            "two campaigns on one trigger, or a case update that changes nothing the template "
            "shows, tell the customer nothing new. The next scheduled fire of the campaign that "
            "sent the last message is not a repeat (a daily reminder). 0 turns the rule off. "
            "No longer than ledger_retention_seconds: the last content is forgotten after that."
        ),
    )
    decision_retention_seconds: int = Field(
        default=90 * 86_400,
        ge=int(REPLAY_WINDOW.total_seconds()),
        description=(
            "How long decisions are kept for the explain API; at least as long as the ledger's "
            "rows, since a claim whose decision is gone is decided again."
        ),
    )
    status_url: str = Field(
        default="http://127.0.0.1:8102/s/{token}",
        description="The case status page; {token} is a signed 'case-status' link.",
    )
    preferences_url: str = Field(
        default="http://127.0.0.1:8101/p/{token}",
        description="The preference centre; {token} is a signed 'preferences' link.",
    )

    @model_validator(mode="after")
    def _decisions_outlive_claims(self) -> Self:
        if self.decision_retention_seconds < self.ledger_retention_seconds:
            raise ValueError(
                "decision_retention_seconds must be at least ledger_retention_seconds: a claim "
                "whose decision is forgotten first would be decided (and sent) again"
            )
        return self

    @model_validator(mode="after")
    def _last_content_outlives_repeat_window(self) -> Self:
        # `last_contents` is swept with the ledger's rows: a window longer than that would let
        # the same message through again once its predecessor's row is forgotten.
        if self.repeat_window_seconds > self.ledger_retention_seconds:
            raise ValueError(
                "repeat_window_seconds must be at most ledger_retention_seconds: the last "
                "message's content is forgotten after the ledger retention, so the same message "
                "would be sent again inside the window"
            )
        return self
