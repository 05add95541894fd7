"""RFC 9457 problem+json for every error a service answers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import ConnectionFailure
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from herald_kit._errors import HeraldError

PROBLEM = "application/problem+json"
log = logging.getLogger("herald.http")


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    type_uri: str = "about:blank",
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json response."""
    body: dict[str, Any] = {"type": type_uri, "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _loc_to_field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_errors(errors: list[Any]) -> list[dict[str, str]]:
    """Pydantic errors as [{field, message}]."""
    out = []
    for err in errors:
        out.append({"field": _loc_to_field(err.get("loc", ())), "message": str(err.get("msg"))})
    return out


def route_of(request: Request) -> str:
    """The matched route's template (`/p/{token}`) for logs, never the raw path: customers'
    link tokens travel in paths, and a log line must not carry one."""
    return str(getattr(request.scope.get("route"), "path", None) or "an unmatched route")


def install_problem_handlers(app: FastAPI) -> None:
    """Map every error to problem+json."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem(
                400,
                "Malformed JSON",
                "The request body is not valid JSON.",
                field="body",
                instance=request.url.path,
            )
        items = validation_errors(errors)
        return problem(
            422,
            "Invalid input",
            "; ".join(f"{i['field']}: {i['message']}" for i in items),
            type_uri="https://herald.dev/problems/InvalidInput",
            instance=request.url.path,
            field=items[0]["field"] if items else None,
            errors=items,
        )

    @app.exception_handler(HeraldError)
    async def _herald(request: Request, exc: HeraldError) -> JSONResponse:
        headers = None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            headers = {"Retry-After": str(int(retry_after + 0.999))}
        return problem(
            exc.status,
            exc.title,
            exc.detail,
            type_uri=exc.type_uri,
            instance=request.url.path,
            field=exc.field,
            headers=headers,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(
            exc.status_code,
            str(exc.detail) if exc.status_code != 404 else "Not found",
            str(exc.detail),
            instance=request.url.path,
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(ConnectionFailure)
    @app.exception_handler(KafkaError)
    async def _dependency(request: Request, exc: Exception) -> JSONResponse:
        # The database or the broker failed mid-request: nothing half-done is reported as done
        # (writers leave outbox markers first), so the caller may retry.
        log.warning(
            "dependency failed on %s", route_of(request), extra={"error": type(exc).__name__}
        )
        runtime = getattr(request.app.state, "runtime", None)
        producer = getattr(runtime, "producer", None)
        if producer is not None:
            await producer.recover(exc)  # a producer the broker refuses for good is replaced
        return problem(
            503,
            "Service unavailable",
            "The database or the message broker did not answer; retry shortly.",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", route_of(request))
        return problem(500, "Internal error", "An unexpected error occurred.")


class BodyLimit:
    """ASGI middleware: refuse request bodies over a size with 413 problem+json."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count body bytes as they arrive; answer 413 past the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413, "Payload too large", f"The body exceeds {self.max_bytes} bytes.", field="body"
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


Handler = Callable[[Request], Awaitable[Any]]
