"""Twilio Voice through twilio-python's async client, behind a small Protocol."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from herald_twilio import ProviderBusy, ProviderRejected, ProviderTimeout, TwilioClient

__all__ = [
    "Placed",
    "ProviderBusy",
    "ProviderRejected",
    "ProviderTimeout",
    "TwilioVoice",
    "VoiceProvider",
]


@dataclass(frozen=True, slots=True)
class Placed:
    """The provider accepted the call."""

    provider_id: str
    status: str


class VoiceProvider(Protocol):
    """What the voice-sender needs of a voice provider."""

    async def call(
        self, *, to: str, url: str, status_callback: str, machine_detection: bool
    ) -> Placed:
        """Place one outbound call whose TwiML comes from `url`."""
        ...

    async def find_placed(self, *, to: str, since: datetime) -> list[str]:
        """Sids of calls from our caller id to `to` the provider created since `since`."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class TwilioVoice:
    """The real twilio-python client; `base_url` points it at the sandbox in development."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        caller_id: str,
        base_url: str | None,
        timeout: float = 10.0,
        sender: str = "voice-sender",
    ) -> None:
        self._twilio = TwilioClient(
            account_sid=account_sid,
            auth_token=auth_token,
            base_url=base_url,
            timeout=timeout,
            sender=sender,
        )
        self._client = self._twilio.rest
        self.caller_id = caller_id

    async def call(
        self, *, to: str, url: str, status_callback: str, machine_detection: bool
    ) -> Placed:
        """Create a Call with answering-machine detection; map errors onto retry or final."""
        kwargs: dict[str, Any] = {
            "to": to,
            "from_": self.caller_id,
            "url": url,
            "method": "POST",
            "status_callback": status_callback,
            "status_callback_method": "POST",
            "status_callback_event": ["completed"],
        }
        if machine_detection:
            kwargs["machine_detection"] = "Enable"
        call = await self._twilio.create(self._client.calls.create_async(**kwargs))
        return Placed(provider_id=str(call.sid), status=str(call.status))

    async def find_placed(self, *, to: str, since: datetime) -> list[str]:
        """Calls from our caller id to `to` created since `since` (Twilio's Calls list, filtered
        by To and From; its dates have whole seconds, hence the margin)."""
        floor = since - timedelta(seconds=2)
        calls = await self._twilio.lookup(
            self._client.calls.list_async(to=to, from_=self.caller_id, limit=50)
        )
        return [str(c.sid) for c in calls if c.date_created is not None and c.date_created >= floor]

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._twilio.close()
