"""Build the RFC 5322 message a customer receives: multipart text + HTML, RFC 8058 headers."""

from __future__ import annotations

import hashlib
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from email_validator import EmailNotValidError, validate_email

from herald_contracts import OutboundEmail
from herald_kit import InvalidInput

ONE_CLICK = "List-Unsubscribe=One-Click"


def message_id_header(message_id: str, *, domain: str) -> str:
    """A Message-ID derived from Herald's message id: a resend carries the same one.

    Hashed so the internal id does not leak into the customer's mailbox.
    """
    digest = hashlib.sha256(message_id.encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def checked_address(address: str) -> str:
    """The recipient, normalised; InvalidInput when it is not a deliverable address form."""
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidInput(f"invalid recipient address: {exc}", field="to") from exc


def _one_line(value: str) -> str:
    # Header values cannot carry line breaks (header injection); collapse them.
    return " ".join(value.split())


def build_email(
    msg: OutboundEmail,
    *,
    from_address: str,
    from_name: str | None,
    domain: str,
    unsubscribe_url: str | None,
) -> EmailMessage:
    """The email for one outbound message.

    With an unsubscribe URL it carries `List-Unsubscribe` (the HTTPS one-click URL) and
    `List-Unsubscribe-Post: List-Unsubscribe=One-Click` as RFC 8058 requires; the relay's DKIM
    signature must cover both (a relay setting, not ours).
    """
    to = checked_address(msg.to)
    email = EmailMessage()
    local, _, host = from_address.partition("@")
    email["From"] = Address(display_name=from_name or "", username=local, domain=host)
    email["To"] = to
    email["Subject"] = _one_line(msg.subject)
    email["Date"] = format_datetime(msg.created_at)
    email["Message-ID"] = message_id_header(msg.message_id, domain=domain)
    # Mark as automated so auto-responders do not answer it (RFC 3834).
    email["Auto-Submitted"] = "auto-generated"
    if unsubscribe_url:
        email["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        email["List-Unsubscribe-Post"] = ONE_CLICK
    email.set_content(msg.text)
    if msg.html:
        email.add_alternative(msg.html, subtype="html")
    # After the body: set_content() drops every Content-* header set before it.
    email["Content-Language"] = msg.locale
    return email
