"""Every service's HTTP requests are handled in a trace: the caller's, when it sends a valid W3C
`traceparent` header, else one of the request's own, so what one request logs and publishes
can be followed by one trace id."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
from fastapi import APIRouter

from herald_kit import JsonFormatter, Runtime, ServiceSettings, TraceContext, build_app
from herald_kit._context import trace_var

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE}-00f067aa0ba902b7-01"


async def _traces_seen(*headers: dict[str, str]) -> list[TraceContext | None]:
    """The trace each request's endpoint ran in, and the trace left behind after each."""
    seen: list[TraceContext | None] = []
    router = APIRouter()

    @router.post("/probe")
    async def probe() -> dict[str, str]:
        seen.append(trace_var.get())
        logging.getLogger("herald.test").info("handled")
        return {}

    settings = ServiceSettings()
    app = build_app(settings, Runtime(settings, "test"), title="t", routers=[router])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        for h in headers:
            r = await client.post("/probe", headers=h)
            assert r.status_code == 200, r.text
            assert trace_var.get() is None  # nothing leaks past the request
    return seen


async def test_a_request_with_a_traceparent_is_handled_in_the_callers_trace() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("herald.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        (trace,) = await _traces_seen({"traceparent": CALLER})
    finally:
        logger.removeHandler(handler)
    assert trace is not None and trace.trace_id == TRACE
    # Its log lines carry the caller's trace id.
    assert json.loads(stream.getvalue().splitlines()[-1])["trace_id"] == TRACE


@pytest.mark.parametrize(
    "header",
    [
        "",
        "not-a-traceparent",
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id: invalid
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id: invalid
        f"ff-{TRACE}-00f067aa0ba902b7-01",  # version ff: invalid
        f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has four parts
        f"00-{TRACE[:-1]}x-00f067aa0ba902b7-01",
    ],
)
async def test_a_request_without_a_valid_traceparent_gets_a_trace_of_its_own(header: str) -> None:
    first, second = await _traces_seen({"traceparent": header}, {"traceparent": header})
    assert first is not None and second is not None
    assert TRACE not in (first.trace_id, second.trace_id)
    assert first.trace_id != second.trace_id  # one per request, not one per process


async def test_a_later_version_traceparent_is_read_for_its_known_parts() -> None:
    (trace,) = await _traces_seen({"traceparent": f"01-{TRACE}-00f067aa0ba902b7-01-later"})
    assert trace is not None and trace.trace_id == TRACE


@pytest.mark.parametrize(
    "header",
    [
        f"00- {TRACE[1:]}-00f067aa0ba902b7-01",  # a space inside the trace id
        f"00-0x{TRACE[2:]}-00f067aa0ba902b7-01",  # a 0x prefix
        f"00-{'1_' * 15}11-00f067aa0ba902b7-01",  # underscores between digits
        f"00-+{TRACE[1:]}-00f067aa0ba902b7-01",  # a sign
        f"00-{chr(0x0660) * 31}1-00f067aa0ba902b7-01",  # Arabic-Indic digits
        f"00-{TRACE}-+0f067aa0ba902b7-01",
        f"00-{TRACE}-00f067aa0ba902b7- 1",
        f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # W3C ids are lower-case hex
    ],
)
def test_a_traceparent_with_anything_but_lower_case_hex_digits_is_ignored(header: str) -> None:
    assert TraceContext.parse(header) is None


def test_a_valid_traceparent_is_read() -> None:
    assert TraceContext.parse(CALLER) == TraceContext(TRACE, "00f067aa0ba902b7")
