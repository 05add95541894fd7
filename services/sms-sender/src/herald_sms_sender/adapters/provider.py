"""Twilio Messaging through twilio-python's async client, behind a small Protocol."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from herald_twilio import ProviderBusy, ProviderRejected, ProviderTimeout, TwilioClient

__all__ = [
    "ProviderBusy",
    "ProviderRejected",
    "ProviderTimeout",
    "Sent",
    "SmsProvider",
    "TwilioSms",
]


@dataclass(frozen=True, slots=True)
class Sent:
    """The provider accepted the message."""

    provider_id: str
    status: str


class SmsProvider(Protocol):
    """What the sender needs of an SMS provider."""

    async def send(self, *, to: str, body: str, status_callback: str | None) -> Sent:
        """Send one SMS."""
        ...

    async def find_sent(self, *, to: str, body: str, since: datetime) -> list[str]:
        """Ids of messages to `to` with `body` the provider accepted since `since`, newest first."""
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
        timeout: float = 10.0,
        sender: str = "sms-sender",
    ) -> None:
        self._twilio = TwilioClient(
            account_sid=account_sid,
            auth_token=auth_token,
            base_url=base_url,
            timeout=timeout,
            sender=sender,
        )
        self._client = self._twilio.rest
        self._from = from_number
        self._service = messaging_service_sid

    @property
    def identity(self) -> str:
        """The sender identity the provider rate-limits: the messaging service, else the number."""
        return self._service or self._from or "default"

    async def send(self, *, to: str, body: str, status_callback: str | None) -> Sent:
        """Create a Message; map Twilio's errors onto busy (retry), rejected (final), timeout."""
        kwargs: dict[str, str] = {"to": to, "body": body}
        if self._service:
            kwargs["messaging_service_sid"] = self._service
        elif self._from:
            kwargs["from_"] = self._from
        if status_callback:
            kwargs["status_callback"] = status_callback
        msg = await self._twilio.create(self._client.messages.create_async(**kwargs))
        return Sent(provider_id=str(msg.sid), status=str(msg.status))

    async def find_sent(self, *, to: str, body: str, since: datetime) -> list[str]:
        """Messages to `to` with this body created since `since` (Twilio dates have seconds)."""
        floor = since - timedelta(seconds=2)
        msgs = await self._twilio.lookup(self._client.messages.list_async(to=to, limit=50))
        return [
            str(m.sid)
            for m in msgs
            if m.body == body and m.date_created is not None and m.date_created >= floor
        ]

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._twilio.close()
