"""An SMTP relay through aiosmtplib, with a small connection pool, behind a Protocol.

The transaction runs in explicit steps (MAIL, RCPT, DATA) so a failure can be classified by
what the relay may have received: before DATA nothing went out and a retry is safe; a lost
connection during DATA may have delivered, so the sender must not resend blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import aiosmtplib
from aiosmtplib import SMTPResponseException

Security = Literal["none", "starttls", "tls"]
Pace = Callable[[], Awaitable[None]]
# Where in the transaction the relay answered: only a refusal at RCPT is about the recipient.
Stage = Literal["connect", "mail", "rcpt", "data"]
# RFC 3463 enhanced status codes that say the recipient's mailbox or domain is gone: bad
# mailbox (5.1.1), bad system (5.1.2), bad syntax (5.1.3), moved (5.1.6), null MX (5.1.10),
# disabled (5.2.1). 5.1.7 and 5.1.8 are about *our* sender address; 5.2.2 (mailbox full) passes.
BOUNCE_STATUSES = frozenset({"5.1.0", "5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1"})
# Without an enhanced code, the RFC 5321 replies a relay gives for a recipient it will not take.
BOUNCE_REPLIES = frozenset({550, 551, 553})
# RFC 3463 statuses about *our* sender address, though in the address subject (5.1.x).
SENDER_STATUSES = frozenset({"5.1.7", "5.1.8"})
_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True, slots=True)
class Accepted:
    """The relay took the message; its reply names its queue id."""

    provider_id: str


class RelayError(Exception):
    """Base of the relay's failures."""

    code: str = "relay-error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class RelayRefused(RelayError):
    """The relay answered with an SMTP error code: 4xx temporary, 5xx permanent."""

    def __init__(self, smtp_code: int, message: str, *, stage: Stage) -> None:
        found = _ENHANCED.match(message)
        self.enhanced = found.group(1) if found else None
        # The relay's own words often quote the recipient's address: the detail, which
        # statuses and logs carry, keeps only the codes and the stage.
        status = f" {self.enhanced}" if self.enhanced else ""
        super().__init__(f"{smtp_code}{status} at {stage.upper()}", code=f"smtp-{smtp_code}")
        self.smtp_code = smtp_code
        self.stage = stage

    @property
    def permanent(self) -> bool:
        """5xx: this message will never be accepted as it is."""
        return self.smtp_code >= 500

    @property
    def bounce(self) -> bool:
        """A hard bounce: the recipient's address no longer works. Only a permanent refusal of
        the recipient at RCPT, naming its mailbox or domain: a 5xx at connect, MAIL or DATA
        (our sender refused, authentication required, content or size rejected) or a policy
        refusal at RCPT (5.7.x, relaying denied) says nothing about the address, and counting
        it would stop email for every customer a misconfigured relay saw."""
        if not self.permanent or self.stage != "rcpt":
            return False
        if self.enhanced is not None:
            return self.enhanced in BOUNCE_STATUSES
        return self.smtp_code in BOUNCE_REPLIES

    @property
    def about_recipient(self) -> bool:
        """A permanent refusal at RCPT of this recipient alone: its address (RFC 3463 5.1.x,
        bar 5.1.7 and 5.1.8, which are about our sender) or its mailbox (5.2.x: disabled, full,
        over its size limit), or without an enhanced code 550/551/553 or 552 (storage). The
        relay works and judged the recipient, so it says nothing against the relay, unlike a
        policy refusal (5.7.x) or any refusal at connect, MAIL or DATA. Every bounce is one."""
        if not self.permanent or self.stage != "rcpt":
            return False
        if self.enhanced is not None:
            subject = self.enhanced.split(".")[1]
            return (subject == "1" and self.enhanced not in SENDER_STATUSES) or subject == "2"
        return self.smtp_code in BOUNCE_REPLIES or self.smtp_code == 552

    @property
    def slow_down(self) -> bool:
        """421: the relay is closing or throttling us; hold back every send for a while."""
        return self.smtp_code == 421


class RelayUnavailable(RelayError):
    """No connection to the relay: nothing was sent."""

    code = "relay-unavailable"


class RelayAuthFailed(RelayUnavailable):
    """The relay refused our credentials (AUTH answered 535 or the like): nothing was sent.
    Retried like an unreachable relay (a secret being rotated), so a wrong secret ends every
    message 'failed' with this reason once its attempts run out."""

    def __init__(self, smtp_code: int, message: str) -> None:
        super().__init__(
            f"relay refused the credentials ({smtp_code} {message})", code=f"smtp-auth-{smtp_code}"
        )


class RelayUntrusted(RelayUnavailable):
    """The relay's TLS certificate did not verify (unknown CA, wrong name, expired): nothing,
    not even the credentials, was sent to it."""

    code = "tls-untrusted"


class RelayAmbiguous(RelayError):
    """The connection broke during DATA: the message may or may not have gone out."""

    code = "relay-ambiguous"


class EmailRelay(Protocol):
    """What the sender needs of an email relay."""

    @property
    def identity(self) -> str:
        """The relay's name for pacing and the circuit breaker (host:port)."""
        ...

    async def send(
        self, *, sender: str, recipient: str, data: bytes, pace: Pace | None = None
    ) -> Accepted:
        """Hand one message to the relay; `pace` is awaited just before the transaction."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class SmtpRelay:
    """aiosmtplib against a configured relay: plain, STARTTLS or implicit TLS, optional auth."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        security: Security = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        pool_size: int = 4,
        validate_certs: bool = True,
        ca_file: str | None = None,
    ) -> None:
        if security == "none" and (username or password):
            # AUTH would send the password in clear text (the settings refuse this too).
            raise ValueError("SMTP credentials need TLS (security starttls or tls)")
        self.host = host
        self.port = port
        self.security = security
        self._username = username or None
        self._password = password or None
        self._timeout = timeout
        self._validate = validate_certs
        self._ca_file = ca_file or None
        self._pool: asyncio.Queue[aiosmtplib.SMTP | None] = asyncio.Queue()
        for _ in range(max(1, pool_size)):
            self._pool.put_nowait(None)

    @property
    def identity(self) -> str:
        """host:port."""
        return f"{self.host}:{self.port}"

    async def _connect(self) -> aiosmtplib.SMTP:
        tls_context = None
        if self.security != "none" and self._validate:
            # Certificate and host name verified against the system store or the given CA.
            tls_context = ssl.create_default_context(cafile=self._ca_file)
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.security == "tls",
            start_tls=True if self.security == "starttls" else False,
            username=self._username,
            password=self._password,
            timeout=self._timeout,
            validate_certs=self._validate,
            tls_context=tls_context,
        )
        try:
            await client.connect()  # with STARTTLS and AUTH when configured
        except aiosmtplib.SMTPAuthenticationError as exc:
            if exc.code >= 500:
                raise RelayAuthFailed(exc.code, exc.message) from exc
            raise RelayRefused(exc.code, exc.message, stage="connect") from exc
        except SMTPResponseException as exc:
            raise RelayRefused(exc.code, exc.message, stage="connect") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            untrusted = _cert_error(exc)
            if untrusted is not None:
                raise RelayUntrusted(
                    f"relay certificate not trusted: {untrusted.verify_message}"
                ) from exc
            raise RelayUnavailable(f"cannot connect: {type(exc).__name__}") from exc
        return client

    async def send(
        self, *, sender: str, recipient: str, data: bytes, pace: Pace | None = None
    ) -> Accepted:
        """MAIL, RCPT, DATA on a pooled connection; errors classified as the module says.

        Pacing waits once a connection is ready, so connecting never bunches sends together.
        """
        client = await self._pool.get()
        try:
            if client is None or not client.is_connected:
                client = None
                client = await self._connect()
            if pace is not None:
                await pace()
            accepted = await self._transaction(client, sender, recipient, data)
        except BaseException:
            if client is not None and client.is_connected:
                # Leave the connection clean for the next message, or drop it.
                try:
                    await client.rset()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()
                    client = None
            else:
                client = None
            raise
        finally:
            self._pool.put_nowait(client if client is not None and client.is_connected else None)
        return accepted

    async def _transaction(
        self, client: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes
    ) -> Accepted:
        stage: Stage = "mail"
        try:
            await client.mail(sender)
            stage = "rcpt"
            await client.rcpt(recipient)
        except SMTPResponseException as exc:
            raise RelayRefused(exc.code, exc.message, stage=stage) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise RelayUnavailable(f"lost the relay before DATA: {type(exc).__name__}") from exc
        try:
            reply = await client.data(data)
        except SMTPResponseException as exc:
            raise RelayRefused(exc.code, exc.message, stage="data") from exc
        except TimeoutError as exc:  # aiosmtplib's SMTPTimeoutError is one too
            raise RelayAmbiguous(
                f"no answer to DATA within {self._timeout:g} s: the relay may have the message"
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise RelayAmbiguous(f"lost the relay during DATA: {type(exc).__name__}") from exc
        return Accepted(provider_id=_queue_id(reply.message))

    async def close(self) -> None:
        """QUIT every idle connection."""
        while not self._pool.empty():
            client = self._pool.get_nowait()
            if client is not None and client.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.quit()


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind an error, if that is what it was."""
    seen: BaseException | None = exc
    for _ in range(8):  # a short chain: aiosmtplib wraps the ssl error once or twice
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _queue_id(reply: str) -> str:
    """The relay's queue id from a 250 reply ('2.0.0 Ok: queued as 4BC1F'), else the reply."""
    marker = "queued as "
    if marker in reply:
        return reply.split(marker, 1)[1].split()[0].strip()
    return reply.strip()[:200]
