"""An SMTP sink (aiosmtpd) on the app's own event loop: captures mail, answers by rule.

Rules let tests make the 'relay' answer 4xx or 5xx for chosen recipients (a share of the time,
a number of times), at RCPT or at DATA, which is how retries and hard bounces are exercised.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, Envelope, Session

Stage = Literal["rcpt", "data"]

log = logging.getLogger("herald.sandbox.smtp")


@dataclass
class EmailRecord:
    """One message the sink accepted."""

    id: str
    mail_from: str
    to: list[str]
    subject: str
    headers: dict[str, str]
    text: str | None
    html: str | None
    size: int
    raw: bytes = field(repr=False)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    received_monotonic: float = field(default_factory=time.monotonic)

    def as_json(self, *, raw: bool = False) -> dict[str, Any]:
        """The record for the sandbox's JSON API (the raw message on request)."""
        d: dict[str, Any] = {
            "id": self.id,
            "mail_from": self.mail_from,
            "to": self.to,
            "subject": self.subject,
            "headers": self.headers,
            "text": self.text,
            "html": self.html,
            "size": self.size,
            "received_at": self.received_at.isoformat(),
        }
        if raw:
            d["raw"] = self.raw.decode("utf-8", errors="replace")
        return d


@dataclass
class SmtpRule:
    """Answer `code` to mail for `recipient` ('*' for all) at a stage, some share of the time."""

    id: int
    recipient: str
    code: int
    message: str
    stage: Stage = "rcpt"
    share: float = 1.0
    times: int | None = None
    hits: int = 0

    def matches(self, address: str, stage: Stage, rng: random.Random) -> bool:
        """Whether this rule answers now (and counts the hit)."""
        if self.stage != stage or self.recipient not in ("*", address.lower()):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        if self.share < 1.0 and rng.random() >= self.share:
            return False
        self.hits += 1
        return True

    def reply(self) -> str:
        """The SMTP reply line."""
        return f"{self.code} {self.message}"

    def as_json(self) -> dict[str, Any]:
        """The rule for the JSON API."""
        return {
            "id": self.id,
            "recipient": self.recipient,
            "code": self.code,
            "message": self.message,
            "stage": self.stage,
            "share": self.share,
            "times": self.times,
            "hits": self.hits,
        }


class Mailbox:
    """Captured mail and the answer rules; in memory by design."""

    def __init__(self, seed: int | None = None) -> None:
        self.emails: list[EmailRecord] = []
        self.rules: list[SmtpRule] = []
        self.refused = 0
        self._ids = itertools.count(1)
        self._rng = random.Random(seed)  # noqa: S311 - fault injection, not crypto

    def add_rule(self, **kwargs: Any) -> SmtpRule:
        """Add an answer rule."""
        kwargs["recipient"] = str(kwargs.get("recipient", "*")).lower()
        rule = SmtpRule(id=next(self._ids), **kwargs)
        self.rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        """Answer 250 to everything again."""
        self.rules.clear()

    def refusal(self, address: str, stage: Stage) -> str | None:
        """The reply line of the first rule that applies, if any."""
        for rule in self.rules:
            if rule.matches(address, stage, self._rng):
                self.refused += 1
                return rule.reply()
        return None

    def capture(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> EmailRecord:
        """Parse and keep a message."""
        parsed = message_from_bytes(raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        text = parsed.get_body(("plain",))
        html = parsed.get_body(("html",))
        record = EmailRecord(
            id=secrets.token_hex(8),
            mail_from=mail_from,
            to=[a.lower() for a in rcpt_tos],
            subject=str(parsed.get("Subject", "")),
            headers={k: str(v) for k, v in parsed.items()},
            text=text.get_content() if isinstance(text, EmailMessage) else None,
            html=html.get_content() if isinstance(html, EmailMessage) else None,
            size=len(raw),
            raw=raw,
        )
        self.emails.append(record)
        return record

    def find(self, to: str | None = None) -> list[EmailRecord]:
        """Mail for one address (all when None), oldest first."""
        want = to.lower() if to else None
        return [e for e in self.emails if want is None or want in e.to]


class _Handler:
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_RCPT(  # aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        refusal = self.mailbox.refusal(address, "rcpt")
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        for address in envelope.rcpt_tos:
            refusal = self.mailbox.refusal(address, "data")
            if refusal:
                return refusal
        raw = envelope.original_content or b""
        record = self.mailbox.capture(envelope.mail_from or "", list(envelope.rcpt_tos), raw)
        return f"250 2.0.0 Ok: queued as {record.id}"


class SmtpSink:
    """The listening SMTP server."""

    def __init__(self, mailbox: Mailbox, *, host: str, port: int) -> None:
        self.mailbox = mailbox
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen (port 0 picks a free one; `port` then says which)."""
        # aiosmtpd logs every command at INFO; one line per message is noise here.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        handler = _Handler(self.mailbox)
        self._server = await loop.create_server(
            lambda: SMTP(handler, hostname="sandbox.herald", loop=loop, data_size_limit=10_485_760),
            host=self.host,
            port=self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        # Port 0 (the default) picked one: say which, or mail cannot find the sink.
        log.info("SMTP sink listening", extra={"host": self.host, "smtp_port": self.port})

    async def stop(self) -> None:
        """Stop listening and drop connections."""
        if self._server is not None:
            self._server.close()
            if hasattr(self._server, "close_clients"):
                self._server.close_clients()
            await self._server.wait_closed()
            self._server = None
