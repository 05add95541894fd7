"""Twilio Messaging through twilio-python's async client, behind a small Protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from herald_kit import PermanentError, RetryableError


@dataclass(frozen=True, slots=True)
class Sent:
    """The provider accepted the message."""

    provider_id: str
    status: str


class ProviderRejected(PermanentError):
    """The provider refused the message for good (e.g. an invalid number)."""


class SmsProvider(Protocol):
    """What the sender needs of an SMS provider."""

    async def send(self, *, to: str, body: str, status_callback: str | None) -> Sent:
        """Send one SMS."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class TwilioSms:
    """The real twilio-python client; `base_url` points it at the sandbox in development."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str | None,
        messaging_service_sid: str | None,
        base_url: str | None,
    ) -> None:
        self._http = AsyncTwilioHttpClient()
        self._client = Client(account_sid, auth_token, http_client=self._http)
        if base_url:
            self._client.api.base_url = base_url.rstrip("/")
        self._from = from_number
        self._service = messaging_service_sid

    async def send(self, *, to: str, body: str, status_callback: str | None) -> Sent:
        """Create a Message; map Twilio's errors onto retryable or permanent."""
        kwargs: dict[str, str] = {"to": to, "body": body}
        if self._service:
            kwargs["messaging_service_sid"] = self._service
        elif self._from:
            kwargs["from_"] = self._from
        if status_callback:
            kwargs["status_callback"] = status_callback
        try:
            msg = await self._client.messages.create_async(**kwargs)
        except TwilioRestException as exc:
            if exc.status == 429 or exc.status >= 500:
                raise RetryableError(
                    f"twilio {exc.status} ({exc.code})", code=str(exc.code or exc.status)
                ) from exc
            raise ProviderRejected(
                f"twilio {exc.status} ({exc.code})", code=str(exc.code or exc.status)
            ) from exc
        return Sent(provider_id=str(msg.sid), status=str(msg.status))

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.close()
