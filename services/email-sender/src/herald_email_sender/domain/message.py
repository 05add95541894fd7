"""Build the RFC 5322 message a customer receives: multipart text + HTML, RFC 8058 headers."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from email.header import Header
from email.utils import format_datetime, formataddr

from email_validator import EmailNotValidError, validate_email

from herald_contracts import OutboundEmail
from herald_kit import InvalidInput

ONE_CLICK = "List-Unsubscribe=One-Click"
CRLF = "\r\n"
MAX_7BIT_LINE = 998  # RFC 5322 line limit, without the CRLF


def message_id_header(message_id: str, *, domain: str) -> str:
    """A Message-ID derived from Herald's message id: a resend carries the same one.

    Hashed so the internal id does not leak into the customer's mailbox.
    """
    digest = hashlib.sha256(message_id.encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def address_key(address: str) -> str:
    """A stable key for an email address, so an unsubscribe is found by address without
    storing it plainly (as the sms-sender keys numbers). Case aside: a mailbox provider that
    told two spellings apart is rare, and an unsubscribe must not miss the other spelling."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def checked_address(address: str) -> str:
    """The recipient, normalised; InvalidInput when it is not a deliverable address form."""
    try:
        # No SMTPUTF8: the message is written in ASCII (an internationalised domain becomes
        # its IDNA form; a non-ASCII mailbox name cannot be addressed without SMTPUTF8).
        checked = validate_email(address, check_deliverability=False, allow_smtputf8=False)
        return checked.ascii_email or checked.normalized
    except EmailNotValidError as exc:
        raise InvalidInput(f"invalid recipient address: {exc}", field="to") from exc


def _one_line(value: str) -> str:
    # Header values cannot carry line breaks (header injection); collapse them.
    return " ".join(value.split())


@dataclass(frozen=True, slots=True)
class BuiltEmail:
    """The message as the relay receives it (CRLF line ends) and its normalised recipient."""

    recipient: str
    data: bytes


def _header(name: str, value: str, *, text: bool = False) -> str:
    """One header line: ASCII as it is (up to the line limit), else RFC 2047 words, folded.

    `text`: an unstructured value from template data (the subject). If it holds something
    shaped like an RFC 2047 word ("=?utf-8?q?...?="), a mail client would decode it and show
    text the template never had (a spoofed notice, say): such a value is itself written as
    words, which decode to it as written.
    """
    plain = value.isascii() and not (text and "=?" in value)
    if plain and len(name) + 2 + len(value) <= MAX_7BIT_LINE:
        return f"{name}: {value}"
    charset = "us-ascii" if plain else "utf-8"
    return f"{name}: {Header(value, charset, header_name=name).encode(linesep=CRLF)}"


def _part(content_type: str, body: str) -> list[str]:
    """A text part: 7bit when it is ASCII with short lines, else base64."""
    lines = body.splitlines() or [""]
    if body.isascii() and max(len(line) for line in lines) <= MAX_7BIT_LINE:
        encoding, payload = "7bit", CRLF.join(lines) + CRLF
    else:
        encoding = "base64"
        payload = base64.encodebytes(body.encode()).decode("ascii").replace("\n", CRLF)
    return [
        f'Content-Type: {content_type}; charset="utf-8"',
        f"Content-Transfer-Encoding: {encoding}",
        "",
        payload,
    ]


def build_email(
    msg: OutboundEmail,
    *,
    from_address: str,
    from_name: str | None,
    domain: str,
    unsubscribe_url: str | None,
) -> BuiltEmail:
    """The email for one outbound message.

    With an unsubscribe URL it carries `List-Unsubscribe` (the HTTPS one-click URL) and
    `List-Unsubscribe-Post: List-Unsubscribe=One-Click` as RFC 8058 requires; the relay's DKIM
    signature must cover both (a relay setting, not ours).

    Written out directly rather than through `email.message.EmailMessage`, whose header
    registry parses every header it is given: that was two thirds of the sender's CPU per
    email. The parts are the standard library's: RFC 2047 words (`email.header`), address
    formatting (`email.utils`), base64.
    """
    to = checked_address(msg.to)
    head = [
        "From: " + formataddr((from_name or "", from_address), charset="utf-8"),
        "To: " + to,
        _header("Subject", _one_line(msg.subject), text=True),
        "Date: " + format_datetime(msg.created_at),
        "Message-ID: " + message_id_header(msg.message_id, domain=domain),
        # Mark as automated so auto-responders do not answer it (RFC 3834).
        "Auto-Submitted: auto-generated",
    ]
    if unsubscribe_url:
        head.append(_header("List-Unsubscribe", f"<{_one_line(unsubscribe_url)}>"))
        head.append("List-Unsubscribe-Post: " + ONE_CLICK)
    head.append("MIME-Version: 1.0")
    head.append(_header("Content-Language", _one_line(msg.locale)))
    if not msg.html:
        lines = head + _part("text/plain", msg.text)
    else:
        boundary = "=_herald_" + secrets.token_hex(12)
        while boundary in msg.text or boundary in msg.html:  # pragma: no cover - 96 random bits
            boundary = "=_herald_" + secrets.token_hex(12)
        lines = [
            *head,
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
            "",
            f"--{boundary}",
            *_part("text/plain", msg.text),
            f"--{boundary}",
            *_part("text/html", msg.html),
            f"--{boundary}--",
            "",
        ]
    return BuiltEmail(recipient=to, data=CRLF.join(lines).encode("ascii"))
