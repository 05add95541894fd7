"""twilio-python's async client with our timeouts, Retry-After, and errors mapped onto the kit's."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from herald_kit import PermanentError, RetryableError, observe_provider_request

T = TypeVar("T")


class ProviderRejected(PermanentError):
    """The provider refused the request for good (e.g. an invalid number)."""


class ProviderBusy(RetryableError):
    """The provider refused the request for now (429, or Twilio's own 503 20503), or could not
    be reached: nothing went out; retry later."""

    def __init__(self, detail: str, *, status: int, code: str, retry_after: float | None) -> None:
        super().__init__(detail, code=code, retry_after=retry_after)
        self.http_status = status


class ProviderTimeout(RetryableError):
    """No verdict: no answer in time, the connection lost, or a 5xx that does not say the
    request was refused. The provider may or may not have taken the request."""


# Twilio's "service unavailable": the one 5xx Twilio documents as "try again with back-off",
# i.e. the request was not taken. Its 500 (20500) is documented as possibly processed ("a
# retried SMS or call may reach the customer twice"), and a gateway's 502/504 (no Twilio code
# in the body) says nothing about whether Twilio got the request.
UNAVAILABLE = 20503

# Where the request in flight keeps its response headers (Retry-After lives there, and
# TwilioRestException does not carry headers): a dict the caller creates before the request
# and the HTTP client fills in. A dict, not a value set in the ContextVar: asyncio.wait_for runs
# the request in a task of its own (on Python 3.11) with a copy of the context, and a value set
# there never reaches the caller; the dict they share does.
_headers_holder: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "twilio_headers_holder", default=None
)


class _HeaderKeepingClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """Twilio's aiohttp client, remembering response headers and turning timeouts into ours."""

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
            # Never connected: nothing can have been sent.
            raise ProviderBusy(
                "twilio unreachable", status=503, code="connect", retry_after=None
            ) from exc
        except aiohttp.ClientError as exc:
            # Connected, then lost: the request may have been taken.
            raise ProviderTimeout(
                f"twilio connection lost: {type(exc).__name__}", code="io"
            ) from exc
        holder = _headers_holder.get()
        if holder is not None:
            holder.clear()
            holder.update({k.lower(): v for k, v in (response.headers or {}).items()})
        return response


def _retry_after(headers: dict[str, str] | None) -> float | None:
    value = (headers or {}).get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class TwilioClient:
    """The real twilio-python client; `base_url` points it at the sandbox in development.

    Every request made through it is counted and timed under the `sender` label
    (`herald_provider_requests_total`, `herald_provider_request_seconds`).
    """

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        base_url: str | None,
        timeout: float = 10.0,
        sender: str = "twilio",
    ) -> None:
        self._http = _HeaderKeepingClient(timeout=timeout)
        self._timeout = timeout
        self.sender = sender
        self.rest = Client(account_sid, auth_token, http_client=self._http)
        if base_url:
            self.rest.api.base_url = base_url.rstrip("/")

    async def create(self, request: Awaitable[T]) -> T:
        """Make one create request; map Twilio's errors onto busy (retry), rejected (final),
        timeout (outcome unknown)."""
        started = time.monotonic()
        try:
            result = await self._create(request)
        except ProviderBusy as exc:
            self._observe("busy", exc.code or str(exc.http_status), started)
            raise
        except ProviderRejected as exc:
            self._observe("rejected", exc.code or "", started)
            raise
        except ProviderTimeout as exc:
            self._observe("timeout", exc.code or "timeout", started)
            raise
        self._observe("accepted", "", started)
        return result

    async def lookup(self, request: Awaitable[T]) -> T:
        """Make one read request (a list or fetch), bounded like a create; errors as create's."""
        started = time.monotonic()
        try:
            result = await self._create(request)
        except (ProviderBusy, ProviderRejected, ProviderTimeout) as exc:
            self._observe("lookup-failed", exc.code or "", started)
            raise
        self._observe("lookup", "", started)
        return result

    def _observe(self, outcome: str, code: str, started: float) -> None:
        observe_provider_request(
            sender=self.sender, outcome=outcome, code=code, seconds=time.monotonic() - started
        )

    async def _create(self, request: Awaitable[T]) -> T:
        headers: dict[str, str] = {}
        token = _headers_holder.set(headers)
        try:
            # A hard bound even if the HTTP layer's own timeout does not fire.
            return await asyncio.wait_for(request, self._timeout + 1)
        except TimeoutError as exc:
            raise ProviderTimeout("twilio did not answer in time", code="timeout") from exc
        except TwilioRestException as exc:
            code = str(exc.code or exc.status)
            if exc.status == 429 or (exc.status == 503 and exc.code == UNAVAILABLE):
                raise ProviderBusy(
                    f"twilio {exc.status} ({code})",
                    status=exc.status,
                    code=code,
                    retry_after=_retry_after(headers),
                ) from exc
            if exc.status >= 500:
                # The request may have been taken (see UNAVAILABLE): an unknown outcome, like
                # a timeout, to be looked up rather than sent again.
                raise ProviderTimeout(
                    f"twilio {exc.status} ({code}): outcome unknown", code=code
                ) from exc
            raise ProviderRejected(f"twilio {exc.status} ({code}): {exc.msg}", code=code) from exc
        finally:
            _headers_holder.reset(token)

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.close()
