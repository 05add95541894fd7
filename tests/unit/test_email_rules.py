"""The email-sender's pure rules: message building (pacing, circuit breaking and backoff are
the kit's, tested with the other senders' in test_sms_rules.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import pytest

from herald_contracts import OutboundEmail
from herald_email_sender.domain.message import build_email, message_id_header
from herald_kit import InvalidInput


class FakeClock:
    """Time that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def outbound(**overrides: Any) -> OutboundEmail:
    values: dict[str, Any] = {
        "message_id": "msg-1",
        "request_id": "req-1",
        "campaign_id": "camp-1",
        "customer_id": "cust-1",
        "to": "Someone@Example.com",
        "subject": "Your visit",
        "text": "Text body é",
        "html": "<p>HTML body</p>",
        "locale": "fr-FR",
        "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        **overrides,
    }
    return OutboundEmail(**values)


def roundtrip(email: EmailMessage) -> EmailMessage:
    parsed = message_from_bytes(email.as_bytes(policy=SMTP), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def build(msg: OutboundEmail, url: str | None = "https://h.example/v1/unsubscribe/tok") -> Any:
    return roundtrip(
        build_email(
            msg,
            from_address="news@h.example",
            from_name="Herald",
            domain="h.example",
            unsubscribe_url=url,
        )
    )


def test_email_is_multipart_with_rfc8058_headers() -> None:
    email = build(outbound())
    assert email["List-Unsubscribe"] == "<https://h.example/v1/unsubscribe/tok>"
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert email["From"] == "Herald <news@h.example>"
    assert email["Content-Language"] == "fr-FR"
    assert email["Date"] == "Fri, 02 Jan 2026 03:04:05 +0000"
    assert email.get_body(("plain",)).get_content().strip() == "Text body é"
    assert email.get_body(("html",)).get_content().strip() == "<p>HTML body</p>"


def test_text_only_email_without_unsubscribe_link_has_no_list_headers() -> None:
    email = build(outbound(html=None), url=None)
    assert email.get_content_type() == "text/plain"
    assert "List-Unsubscribe" not in email
    assert "List-Unsubscribe-Post" not in email


def test_message_id_is_stable_per_message_and_hides_the_internal_id() -> None:
    a = message_id_header("msg-1", domain="h.example")
    assert a == message_id_header("msg-1", domain="h.example")
    assert a != message_id_header("msg-2", domain="h.example")
    assert "msg-1" not in a and a.endswith("@h.example>")
    assert build(outbound())["Message-ID"] == a


def test_line_breaks_in_the_subject_cannot_inject_headers() -> None:
    email = build(outbound(subject="Hello\r\nBcc: victim@example.com"))
    assert "Bcc" not in email
    assert email["Subject"] == "Hello Bcc: victim@example.com"


@pytest.mark.parametrize("bad", ["no-at-sign", "a@b@c.example", "x@", "@example.com"])
def test_an_invalid_recipient_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(InvalidInput) as info:
        build(outbound(to=bad))
    assert info.value.field == "to"
