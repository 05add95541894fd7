"""Which delivery failures say an address no longer works."""

from __future__ import annotations

from typing import Literal

from herald_contracts import DeliveryStatus

AddressStatus = Literal["valid", "bounced", "unreachable"]

# Twilio error codes that mean the number itself cannot receive: unknown destination
# (30005), landline or unreachable carrier (30006), invalid 'To' (21211), not a mobile number
# (21614), invalid number for a call (13224). Not 30003, a handset switched off or out of
# coverage (it passes), nor 30008 (unknown error).
UNREACHABLE_CODES = frozenset({"30005", "30006", "21211", "21614", "13224"})
HARD_REASONS = ("hard-bounce", "hard bounce", "hard_bounce", "unreachable", "no such user")
# SMTP answers that say the mailbox or its domain is gone (RFC 3463 enhanced statuses, or the
# bare RFC 5321 replies for a refused recipient). Other 5xx (5.7.x policy, 5.3.4 size, 5.2.2
# mailbox full) say nothing lasting about the address.
BOUNCE_SMTP_CODES = frozenset(
    {"5.1.0", "5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1", "550", "551", "553"}
)


def address_status(status: DeliveryStatus) -> AddressStatus | None:
    """The status the address should take after this delivery status, or None to leave it."""
    if status.status not in ("failed", "undelivered"):
        return None
    code = (status.error_code or "").strip()
    reason = (status.reason or "").lower()
    hard = any(r in reason for r in HARD_REASONS)
    if status.channel == "email":
        # The email sender says "hard-bounce" only for a recipient refused at RCPT; a provider
        # that reports bare SMTP codes is read by the same rule.
        if hard or code in BOUNCE_SMTP_CODES:
            return "bounced"
        return None
    if hard or code in UNREACHABLE_CODES:
        return "unreachable"
    return None
