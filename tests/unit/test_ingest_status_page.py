"""The status page's links when the service has no link secret configured."""

from __future__ import annotations

import httpx

from herald_ingest.app import create_app
from herald_ingest.config import Settings
from herald_kit import ApiKeyEntry, hash_key


async def test_without_a_link_secret_links_answer_503_problem_not_500() -> None:
    # An unset setting is the operator's to fix, and retrying later may succeed: 503, as the
    # preference centre answers, rather than an unexpected-error 500.
    settings = Settings(
        api_keys=[ApiKeyEntry(name="ops", hash=hash_key("k"), scopes=["cases:read"])]
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for r in (
            await c.get("/s/eyJjYXNlIjoiYzEifQ.aaaa.bbbb"),
            await c.post("/s/eyJjYXNlIjoiYzEifQ.aaaa.bbbb/reply", content=b"intent=confirm"),
        ):
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert "link secret" in r.json()["detail"]
