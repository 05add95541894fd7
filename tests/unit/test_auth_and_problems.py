"""API keys (hashed, scoped) and RFC 9457 answers, on a small app built by the kit."""

from __future__ import annotations

import logging
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from pymongo.errors import AutoReconnect

from herald_kit import (
    ApiKeyEntry,
    Principal,
    Runtime,
    ServiceSettings,
    build_app,
    hash_key,
    new_key,
    require_scopes,
)

KEY = new_key()
router = APIRouter()


class Thing(BaseModel):
    name: str = Field(min_length=1)
    size: int


@router.post("/things")
async def make(
    thing: Thing, who: Annotated[Principal, Depends(require_scopes("things:write"))]
) -> dict[str, str]:
    return {"by": who.name, "name": thing.name}


@router.get("/p/{token}")
async def link_page(token: str) -> None:
    if token.startswith("db-"):
        raise AutoReconnect("primary stepped down")
    raise RuntimeError("a bug in the handler")


def _settings() -> ServiceSettings:
    return ServiceSettings(
        api_keys=[
            ApiKeyEntry(name="ops", hash=hash_key(KEY), scopes=["things:write"]),
            ApiKeyEntry(name="viewer", hash=hash_key("viewer-key"), scopes=["things:read"]),
        ],
        max_body_bytes=2048,
    )


@pytest.fixture
def client() -> httpx.AsyncClient:
    settings = _settings()
    app = build_app(settings, Runtime(settings, "t", uses_kafka=False), title="t", routers=[router])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_only_hashes_are_configured() -> None:
    assert hash_key(KEY).startswith("sha256:") and KEY not in hash_key(KEY)
    assert new_key() != new_key()


async def test_missing_key_is_401_problem(client: httpx.AsyncClient) -> None:
    r = await client.post("/things", json={"name": "a", "size": 1})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"


async def test_wrong_key_is_401_and_missing_scope_is_403(client: httpx.AsyncClient) -> None:
    r = await client.post("/things", json={}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = await client.post(
        "/things", json={"name": "a", "size": 1}, headers={"X-API-Key": "viewer-key"}
    )
    assert r.status_code == 403
    assert "things:write" in r.json()["detail"]


async def test_valid_key_with_scope(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/things", json={"name": "a", "size": 1}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert r.status_code == 200 and r.json() == {"by": "ops", "name": "a"}


async def test_invalid_field_names_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/things", json={"name": "", "size": "big"}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert r.status_code == 422
    body = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert body["status"] == 422 and body["field"] in ("name", "size")
    assert {e["field"] for e in body["errors"]} == {"name", "size"}


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/things",
        content=b"{not json",
        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["title"] == "Malformed JSON"


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/things",
        content=b"x" * 5000,
        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["field"] == "body"


async def test_health_is_public_and_metrics_are_prometheus(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/metrics")
    assert "herald_http_requests_total" in r.text


def _answered(route: str, method: str, status: str) -> float:
    from herald_kit._metrics import HTTP_REQUESTS

    return HTTP_REQUESTS.labels(route, method, status)._value.get()


async def test_requests_are_counted_by_route_template_method_and_status(
    client: httpx.AsyncClient,
) -> None:
    # Dashboards chart answered requests per route and status: refused ones count too.
    before = (
        _answered("/things", "POST", "401"),
        _answered("unmatched", "POST", "413"),  # refused before routing
        _answered("unmatched", "GET", "404"),
    )
    await client.post("/things", json={"name": "a", "size": 1})
    await client.post(
        "/things",
        content=b"x" * 5000,
        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    await client.get("/no/such/route")
    after = (
        _answered("/things", "POST", "401"),
        _answered("unmatched", "POST", "413"),  # refused before routing
        _answered("unmatched", "GET", "404"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


async def test_errors_on_a_link_route_log_the_route_not_the_customers_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # /p/{token} and /s/{token} carry a customer's link token in the path: a log line that
    # names the path would hand the link to whoever reads the logs.
    settings = _settings()
    app = build_app(settings, Runtime(settings, "t", uses_kafka=False), title="t", routers=[router])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    token = "eyJjIjoiY3VzdC0xIn0.axcBgw.DzpK55OmSyQpuMoQ2RXw48nkpgo"
    caplog.set_level(logging.INFO, logger="herald.http")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get(f"/p/db-{token}")).status_code == 503
        assert (await c.get(f"/p/{token}")).status_code == 500
    lines = [r.getMessage() for r in caplog.records if r.name == "herald.http"]
    assert lines == ["dependency failed on /p/{token}", "unhandled error on /p/{token}"]
    assert token not in caplog.text
