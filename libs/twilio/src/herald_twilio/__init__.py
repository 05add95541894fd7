"""Twilio plumbing shared by the SMS and voice senders."""

from herald_twilio._client import (
    ProviderBusy,
    ProviderRejected,
    ProviderTimeout,
    TwilioClient,
)
from herald_twilio._sending import (
    OPEN_CIRCUIT_PATIENCE,
    PauseOutcome,
    breaker_deadline,
    busy_delay,
    expired_waiting,
    gave_up_reason,
    pause_unclaimed,
    publish_delivery_status,
    publish_reported_status,
    republish_settled,
)
from herald_twilio._webhooks import BadSignature, validate_signed_form

__all__ = [
    "OPEN_CIRCUIT_PATIENCE",
    "BadSignature",
    "PauseOutcome",
    "ProviderBusy",
    "ProviderRejected",
    "ProviderTimeout",
    "TwilioClient",
    "breaker_deadline",
    "busy_delay",
    "expired_waiting",
    "gave_up_reason",
    "pause_unclaimed",
    "publish_delivery_status",
    "publish_reported_status",
    "republish_settled",
    "validate_signed_form",
]
