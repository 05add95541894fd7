"""Which delivery failures say an address no longer works."""

from __future__ import annotations

from typing import Literal

from herald_contracts import DeliveryStatus

AddressStatus = Literal["valid", "bounced", "unreachable"]

# Twilio error codes that mean the number itself cannot receive: unreachable handset
# (30003), unknown destination (30005), landline or unreachable carrier (30006),
# invalid 'To' (21211), not a mobile number (21614), blocked/unknown number (30008 is not).
UNREACHABLE_CODES = frozenset({"30003", "30005", "30006", "21211", "21614", "13224"})
HARD_REASONS = ("hard-bounce", "hard bounce", "hard_bounce", "unreachable", "no such user")


def address_status(status: DeliveryStatus) -> AddressStatus | None:
    """The status the address should take after this delivery status, or None to leave it."""
    if status.status not in ("failed", "undelivered"):
        return None
    code = (status.error_code or "").strip()
    reason = (status.reason or "").lower()
    hard = any(r in reason for r in HARD_REASONS)
    if status.channel == "email":
        # SMTP permanent failures are 5xx / 5.x.x; 4xx are soft and retried elsewhere.
        if hard or code.startswith("5"):
            return "bounced"
        return None
    if hard or code in UNREACHABLE_CODES:
        return "unreachable"
    return None
