"""The email-sender's pure rules: message building (pacing, circuit breaking and backoff are
the kit's, tested with the other senders' in test_sms_rules.py)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from pydantic import ValidationError

from herald_contracts import OutboundEmail
from herald_devstack import Stack, StackConfig
from herald_email_sender.adapters.smtp import RelayRefused, SmtpRelay
from herald_email_sender.config import Settings
from herald_email_sender.domain.message import BuiltEmail, build_email, message_id_header
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


def roundtrip(email: BuiltEmail) -> EmailMessage:
    parsed = message_from_bytes(email.data, policy=policy.default)
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


def test_the_one_click_url_must_be_https_unless_http_is_allowed_explicitly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("HERALD_EMAIL_SENDER_"):
            monkeypatch.delenv(name)
    # RFC 8058: List-Unsubscribe-Post needs an HTTPS URI. A link secret turns the header on,
    # so an http:// one-click address (given, or the default http://host:port) is refused.
    for given in (
        {},
        {"public_base_url": "http://mail.herald.test"},
        {"unsubscribe_base_url": "http://mail.herald.test", "public_base_url": "https://x.test"},
        {"unsubscribe_base_url": "mail.herald.test"},
    ):
        with pytest.raises(ValidationError, match="https://"):
            Settings(link_secret="s", **given)
    # The error names the setting, never the secrets it was given with.
    with pytest.raises(ValidationError) as refused:
        Settings(link_secret="link-s3cret", smtp_password="smtp-s3cret")
    assert "unsubscribe_base_url" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    assert Settings(link_secret="s", public_base_url="https://mail.herald.test")
    assert Settings(link_secret="s", unsubscribe_base_url="https://u.herald.test/")
    assert Settings(public_base_url="http://mail.herald.test")  # no secret: no header at all
    # Local development says so, explicitly (here as the environment would).
    monkeypatch.setenv("HERALD_EMAIL_SENDER_UNSUBSCRIBE_ALLOW_HTTP", "true")
    assert Settings(link_secret="s").unsubscribe_allow_http
    with pytest.raises(ValidationError, match="https://"):
        Settings(link_secret="s", unsubscribe_base_url="ftp://mail.herald.test")


@pytest.mark.parametrize(
    "credentials",
    [
        {"smtp_username": "herald", "smtp_password": "smtp-s3cret"},
        {"smtp_password": "smtp-s3cret"},
        {"smtp_username": "herald"},
    ],
    ids=["both", "password", "username"],
)
def test_relay_credentials_are_refused_on_a_connection_without_tls(
    monkeypatch: pytest.MonkeyPatch, credentials: dict[str, str]
) -> None:
    for name in list(os.environ):
        if name.startswith("HERALD_EMAIL_SENDER_"):
            monkeypatch.delenv(name)
    # AUTH over a plain connection would hand the password to anyone on the path: the service
    # refuses to start, naming the setting and never the secret.
    with pytest.raises(ValidationError) as refused:
        Settings(smtp_security="none", **credentials)
    assert "smtp_security" in str(refused.value) and "clear text" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    for security in ("starttls", "tls"):
        assert Settings(smtp_security=security, **credentials)
    assert Settings(smtp_security="none")  # a local sink without credentials
    assert Settings(smtp_security="none", smtp_username="", smtp_password="")  # unset secrets
    # The relay adapter itself never authenticates without TLS either.
    login = {"username": credentials.get("smtp_username"), "password": "smtp-s3cret"}
    with pytest.raises(ValueError, match="TLS"):
        SmtpRelay(host="127.0.0.1", port=2525, security="none", **login)


@pytest.mark.parametrize(
    ("written", "security"),
    [("STARTTLS", "starttls"), ("TLS", "tls"), ("StartTLS", "starttls"), ("None", "none")],
)
def test_smtp_security_is_accepted_in_any_case(
    monkeypatch: pytest.MonkeyPatch, written: str, security: str
) -> None:
    # The chart lets SMTP_SECURITY: STARTTLS through (it compares in lower case): the service
    # must start with it, not crash-loop on a spelling.
    for name in list(os.environ):
        if name.startswith("HERALD_EMAIL_SENDER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HERALD_EMAIL_SENDER_SMTP_SECURITY", written)
    assert Settings().smtp_security == security
    if security == "none":
        # The credentials check still sees the spelling for what it is.
        with pytest.raises(ValidationError, match="clear text"):
            Settings(smtp_username="herald", smtp_password="smtp-s3cret")
    with pytest.raises(ValidationError, match="smtp_security"):
        Settings(smtp_security="SSL")


def test_the_local_stack_allows_an_http_one_click_url_explicitly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `make run` has no public HTTPS address; its email-sender must still start.
    stack = Stack(StackConfig())
    spec = next(s for s in stack.specs if s.name == "email-sender")
    for name in list(os.environ):
        if name.startswith("HERALD_EMAIL_SENDER_"):
            monkeypatch.delenv(name)
    for name, value in stack.env_for(spec).items():
        if name.startswith("HERALD_EMAIL_SENDER_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.link_secret.get_secret_value() and settings.unsubscribe_allow_http
    assert settings.unsubscribe_base().startswith("http://127.0.0.1:")


def test_non_ascii_subject_sender_name_and_bodies_reach_the_customer_intact() -> None:
    subject = "您的工程师将于 14:00 到达 — Case 123 " * 3
    text = "Bonjour, votre technicien arrive à 14h00.\n" + "x" * 1200
    msg = outbound(subject=subject, text=text, html="<p>您好</p>")
    email = roundtrip(
        build_email(
            msg,
            from_address="news@h.example",
            from_name='Herald Énergie, "Ltd"',
            domain="h.example",
            unsubscribe_url=None,
        )
    )
    assert email["Subject"] == " ".join(subject.split())
    assert email["From"].addresses[0].display_name == 'Herald Énergie, "Ltd"'
    assert email["From"].addresses[0].addr_spec == "news@h.example"
    assert email.get_body(("plain",)).get_content().rstrip("\n") == text
    assert email.get_body(("html",)).get_content().strip() == "<p>您好</p>"
    assert not email.defects and not any(part.defects for part in email.walk())


@pytest.mark.parametrize(
    "name",
    [
        "=?utf-8?q?Bank=3A_your_account_is_closed=2C_call_0800_000?=",
        "=?iso-8859-1?B?WW91IHdvbiBhIHByaXpl?=",
        "Ann =?utf-8?q?x?= Lee, é",
        "a=?b",
    ],
)
def test_template_data_shaped_like_an_encoded_word_is_shown_as_written(name: str) -> None:
    # A customer name (or any template data) in the subject that looks like an RFC 2047 word
    # must not be decoded by the mail client into text the template never had.
    subject = f"Hello {name}, your engineer is booked"
    email = build(outbound(subject=subject))
    assert email["Subject"] == subject
    assert not email.defects


def test_an_internationalised_domain_is_addressed_in_ascii_and_a_non_ascii_mailbox_refused() -> (
    None
):
    built = build_email(
        outbound(to="ann@bücher.example"),
        from_address="news@h.example",
        from_name=None,
        domain="h.example",
        unsubscribe_url=None,
    )
    assert built.recipient == "ann@xn--bcher-kva.example"
    with pytest.raises(InvalidInput) as info:
        build(outbound(to="ü@example.com"))
    assert info.value.field == "to"


@pytest.mark.parametrize(
    ("code", "message", "stage", "bounce", "recipient"),
    [
        (550, "5.1.1 <ada@example.com>: Recipient address rejected", "rcpt", True, True),
        (550, "Mailbox unavailable", "rcpt", True, True),  # no enhanced code: the reply decides
        (553, "5.1.3 Bad recipient address syntax", "rcpt", True, True),
        (550, "5.2.1 Mailbox disabled", "rcpt", True, True),
        (552, "5.2.2 Mailbox full", "rcpt", False, True),  # full, not gone: yet this one alone
        (552, "Mailbox full", "rcpt", False, True),
        (552, "5.2.3 Message too large for this mailbox", "rcpt", False, True),
        (550, "5.1.4 Ambiguous destination mailbox", "rcpt", False, True),
        (554, "5.7.1 Relay access denied", "rcpt", False, False),  # the relay's policy
        (550, "5.7.1 Relaying denied", "rcpt", False, False),
        (553, "5.1.8 Sender address rejected: Domain not found", "rcpt", False, False),  # ours
        (554, "Transaction failed", "rcpt", False, False),
        (553, "5.1.8 Sender address rejected", "mail", False, False),  # our sender
        (530, "5.7.0 Authentication required", "mail", False, False),
        (554, "5.7.1 Message rejected as spam", "data", False, False),
        (552, "5.3.4 Message size exceeds fixed limit", "data", False, False),
        (554, "5.1.1 no such user", "data", False, False),  # after DATA: not a recipient verdict
        (554, "Service unavailable", "connect", False, False),
        (450, "4.2.1 Mailbox busy", "rcpt", False, False),
    ],
)
def test_only_a_recipient_refused_at_rcpt_is_a_hard_bounce_or_about_the_recipient(
    code: int, message: str, stage: Any, bounce: bool, recipient: bool
) -> None:
    refused = RelayRefused(code, message, stage=stage)
    assert refused.bounce is bounce
    # About this recipient alone: the relay is not to blame (its circuit breaker stays closed).
    assert refused.about_recipient is recipient
    assert refused.permanent is (code >= 500)
    # The relay's words can quote the address; what statuses and logs carry never does.
    assert "@" not in refused.detail and str(code) in refused.detail
