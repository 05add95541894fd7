"""The shape every service shares: a runtime (database, producer, consumers) and a FastAPI app
with /healthz, /readyz, /metrics, problem+json and a body-size limit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from herald_contracts import Topic, utc_now
from herald_kit._auth import KeyStore
from herald_kit._concurrent import ConcurrentConsumerLoop
from herald_kit._context import TraceContext, trace_var
from herald_kit._kafka import ConsumerLoop, EventProducer, Handler
from herald_kit._logging import configure_logging
from herald_kit._metrics import HTTP_REQUESTS, UP, labelled
from herald_kit._mongo import Doc, create_client, ping
from herald_kit._problems import BodyLimit, install_problem_handlers, problem
from herald_kit._retention import Kept, Retention
from herald_kit._settings import ServiceSettings

log = logging.getLogger("herald.service")
Hook = Callable[[], Awaitable[None]]


class Runtime:
    """A service's connections and background work, started and stopped by the app's lifespan."""

    def __init__(
        self,
        settings: ServiceSettings,
        service: str,
        *,
        uses_kafka: bool = True,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.clock = clock  # the service's now, for retention (tests pin it)
        self.service = service
        self.uses_kafka = uses_kafka
        self.mongo: AsyncMongoClient[Doc] | None = None
        self.producer = EventProducer(settings, source=service)
        self.consumers: list[ConsumerLoop] = []
        self._on_start: list[Hook] = []
        self._on_stop: list[Hook] = []
        self._ready_checks: dict[str, Callable[[], Awaitable[bool]]] = {}
        self._kept: list[Kept] = []
        self.retention: Retention | None = None
        self.started = asyncio.Event()

    @property
    def db(self) -> AsyncDatabase[Doc]:
        """This service's own database."""
        if self.mongo is None:
            raise RuntimeError("runtime not started")
        return self.mongo[self.settings.mongo_db]

    def consume(
        self, group: str, topics: Sequence[Topic], handler: Handler, *, concurrency: int = 1
    ) -> ConsumerLoop:
        """Register a consumer group; it starts with the runtime.

        With `concurrency` > 1 a polled batch is handled with that many keys in flight (records
        of one key stay in order); the handler must then be safe across keys.
        """
        if concurrency > 1:
            loop: ConsumerLoop = ConcurrentConsumerLoop(
                self.settings,
                self.producer,
                group,
                list(topics),
                handler,
                batch=self.settings.consumer_batch,
                concurrency=concurrency,
            )
        else:
            loop = ConsumerLoop(
                self.settings,
                self.producer,
                group,
                list(topics),
                handler,
                batch=self.settings.consumer_batch,
            )
        self.consumers.append(loop)
        return loop

    def on_start(self, hook: Hook) -> Hook:
        """Run hook after connecting, before consumers start (indexes, views)."""
        self._on_start.append(hook)
        return hook

    def on_stop(self, hook: Hook) -> Hook:
        """Run hook before disconnecting."""
        self._on_stop.append(hook)
        return hook

    def forget_old(self, collection: str, *, keep: timedelta | None = None) -> None:
        """Forget the collection's rows `keep` (default: the ledger retention) after their `at`.

        Rows without `at` are kept. One sweep per `retention_interval_seconds` covers every
        collection registered (see herald_kit's _retention).
        """
        keep = keep or timedelta(seconds=self.settings.ledger_retention_seconds)
        self._kept.append(Kept(collection, keep))

    def ready_check(self, name: str, check: Callable[[], Awaitable[bool]]) -> None:
        """Add a readiness check of the service's own."""
        self._ready_checks[name] = check

    async def start(self) -> None:
        """Connect, run start hooks, start consumers."""
        if self.settings.mongo_db:
            self.mongo = create_client(
                self.settings.mongo_uri.get_secret_value(), app_name=f"herald-{self.service}"
            )
        if self.uses_kafka:
            await self.producer.start()
        for hook in self._on_start:
            await hook()
        if self._kept and self.mongo is not None:
            self.retention = Retention(
                self.db,
                self._kept,
                interval_seconds=self.settings.retention_interval_seconds,
                clock=self.clock,
            )
            await self.retention.ensure_indexes()
            self.retention.start()
        for consumer in self.consumers:
            await consumer.start()
        self.started.set()

    async def stop(self) -> None:
        """Stop consumers first (records being handled finish within the stop grace and are
        committed), then the rest.

        Every step runs even when one before it failed or the caller was cancelled meanwhile:
        the producer's unsent records are flushed and the database closed all the same. A stop
        hook's failure is logged; any other step's failure, or the cancellation, is raised once
        every step has run.
        """
        raised: BaseException | None = None

        async def step(run: Hook, hook: bool = False) -> None:
            nonlocal raised
            try:
                await run()
            except asyncio.CancelledError as exc:
                raised = raised or exc
            except Exception as exc:
                log.exception("stop hook failed" if hook else "stop step failed")
                if not hook:
                    raised = raised or exc

        # Every loop stops taking records at once, so that their stop graces (records being
        # handled may finish) run together rather than one after the other.
        for consumer in self.consumers:
            consumer.stopping()
        if self.retention is not None:
            await step(self.retention.stop)
            self.retention = None
        for consumer in self.consumers:
            await step(consumer.stop)
        for on_stop in reversed(self._on_stop):
            await step(on_stop, hook=True)
        if self.uses_kafka:
            await step(self.producer.stop)
        if self.mongo is not None:
            await step(self.mongo.close)
            self.mongo = None
        if raised is not None:
            raise raised

    async def readiness(self) -> dict[str, bool]:
        """Each dependency and whether it is reachable right now."""
        checks: dict[str, bool] = {}
        if self.mongo is not None:
            checks["database"] = await ping(self.mongo)
        if self.uses_kafka:
            checks["kafka"] = await self.producer.ready()
        for consumer in self.consumers:
            checks[f"consumer:{consumer.group}"] = consumer.ready()
        for name, check in self._ready_checks.items():
            try:
                checks[name] = await check()
            except Exception:
                checks[name] = False
        return checks


class RequestCounter:
    """ASGI middleware: count answered requests by route template, method and status.

    Plain ASGI: Starlette's `@app.middleware("http")` runs every request in a task of its own
    with memory streams between the two halves, a tenth of a webhook receiver's CPU.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; count it with the status it was answered with."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes is answered 500 by the server

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            # The router records the matched route in the scope it was given.
            path = getattr(scope.get("route"), "path", "unmatched")
            labelled(HTTP_REQUESTS, path, scope["method"], str(status)).inc()


class TraceRequests:
    """ASGI middleware: handle each request in a trace, the caller's when it sends a valid W3C
    `traceparent` header, else one of its own, so the request's log lines and the records it
    publishes share one trace id.

    Plain ASGI for the reason RequestCounter is; the trace is set in the request's own task,
    which the endpoint runs in.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on inside its trace."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                trace = TraceContext.parse(value.decode("latin-1"))
                break
        token = trace_var.set(trace or TraceContext.new())
        try:
            await self.app(scope, receive, send)
        finally:
            trace_var.reset(token)


def build_app(
    settings: ServiceSettings,
    runtime: Runtime,
    *,
    title: str,
    description: str = "",
    routers: Sequence[APIRouter] = (),
    version: str = "0.1.0",
) -> FastAPI:
    """A FastAPI app wired to the runtime, with the endpoints every service has."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(runtime.service, settings.log_level)
        await runtime.start()
        log.info("started", extra={"port": settings.port})
        try:
            yield
        finally:
            await runtime.stop()
            log.info("stopped")

    app = FastAPI(title=title, description=description, version=version, lifespan=lifespan)
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.keystore = KeyStore(settings.api_keys)
    install_problem_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestCounter)
    # Added last, so outermost: the body limit's and the problem handlers' log lines are in
    # the request's trace too.
    app.add_middleware(TraceRequests)

    @app.get("/healthz", tags=["ops"], summary="The process is alive.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Kafka, the database and consumers are ready.",
        responses={503: {"description": "A dependency is not ready (problem+json)."}},
    )
    async def readyz() -> Response:
        checks = await runtime.readiness()
        ok = all(checks.values()) and runtime.started.is_set()
        UP.labels(runtime.service).set(1 if ok else 0)
        if ok:
            return JSONResponse({"status": "ready", "checks": checks})
        failing = [k for k, v in checks.items() if not v] or ["starting"]
        return problem(503, "Not ready", f"Not ready: {', '.join(failing)}.", checks=checks)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics.", include_in_schema=True)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    return app
