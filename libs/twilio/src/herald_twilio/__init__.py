"""Twilio plumbing shared by the SMS and voice senders."""

from herald_twilio._client import (
    ProviderBusy,
    ProviderRejected,
    ProviderTimeout,
    TwilioClient,
)
from herald_twilio._sending import (
    PauseOutcome,
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
    "BadSignature",
    "PauseOutcome",
    "ProviderBusy",
    "ProviderRejected",
    "ProviderTimeout",
    "TwilioClient",
    "busy_delay",
    "expired_waiting",
    "gave_up_reason",
    "pause_unclaimed",
    "publish_delivery_status",
    "publish_reported_status",
    "republish_settled",
    "validate_signed_form",
]
