"""Twilio Voice through twilio-python's async client, behind a small Protocol."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from herald_kit import PermanentError, RetryableError


@dataclass(frozen=True, slots=True)
class Placed:
    """The provider accepted the call."""

    provider_id: str
    status: str


class ProviderRejected(PermanentError):
    """The provider refused the call for good (e.g. an invalid number)."""


class ProviderBusy(RetryableError):
    """The provider answered 429 or 5xx, or could not be reached: no call was placed."""

    def __init__(self, detail: str, *, status: int, code: str, retry_after: float | None) -> None:
        super().__init__(detail, code=code, retry_after=retry_after)
        self.http_status = status


class ProviderTimeout(RetryableError):
    """No answer in time: the provider may or may not have placed the call."""


class VoiceProvider(Protocol):
    """What the voice-sender needs of a voice provider."""

    async def call(
        self, *, to: str, url: str, status_callback: str, machine_detection: bool
    ) -> Placed:
        """Place one outbound call whose TwiML comes from `url`."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class _Client(AsyncTwilioHttpClient):  # type: ignore[misc]
    """Twilio's aiohttp client with the Retry-After header kept and timeouts made ours."""

    last_retry_after: float | None = None

    async def request(self, *args: Any, **kwargs: Any) -> Response:
        auth = kwargs.pop("auth", None)
        if auth is not None:
            # aiohttp deprecates BasicAuth objects; the header is the same bytes on the wire.
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": f"Basic {token}"}
        # twilio's async client drops its own timeout (aiohttp would wait 5 minutes): apply it.
        if kwargs.get("timeout") is None and self.timeout:
            kwargs["timeout"] = float(self.timeout)  # aiohttp makes it ClientTimeout(total=...)
        try:
            response: Response = await super().request(*args, **kwargs)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise ProviderTimeout("twilio did not answer in time", code="timeout") from exc
        except aiohttp.ClientConnectorError as exc:
            raise ProviderBusy(
                "twilio unreachable", status=503, code="connect", retry_after=None
            ) from exc
        except aiohttp.ClientError as exc:
            raise ProviderTimeout(
                f"twilio connection lost: {type(exc).__name__}", code="io"
            ) from exc
        value = (response.headers or {}).get("Retry-After")
        try:
            self.last_retry_after = float(value) if value else None
        except ValueError:
            self.last_retry_after = None
        return response


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
    ) -> None:
        self._http = _Client(timeout=timeout)
        self._timeout = timeout
        self._client = Client(account_sid, auth_token, http_client=self._http)
        if base_url:
            self._client.api.base_url = base_url.rstrip("/")
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
        try:
            # A hard bound even if the HTTP layer's own timeout does not fire.
            call = await asyncio.wait_for(
                self._client.calls.create_async(**kwargs), self._timeout + 1
            )
        except TimeoutError as exc:
            raise ProviderTimeout("twilio did not answer in time", code="timeout") from exc
        except TwilioRestException as exc:
            code = str(exc.code or exc.status)
            if exc.status == 429 or exc.status >= 500:
                raise ProviderBusy(
                    f"twilio {exc.status} ({code})",
                    status=exc.status,
                    code=code,
                    retry_after=self._http.last_retry_after,
                ) from exc
            raise ProviderRejected(f"twilio {exc.status} ({code}): {exc.msg}", code=code) from exc
        return Placed(provider_id=str(call.sid), status=str(call.status))

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.close()
