"""The explain API on the real database: every decision about a customer, a page at a time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from herald_dispatcher.app import create_app
from herald_dispatcher.config import Settings
from support import running, service_settings

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


async def test_decisions_read_page_by_page_to_the_newest_and_a_bad_cursor_is_refused(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str], mongo: Any
) -> None:
    """A customer with more decisions than a page: reading on with `next` returns each once,
    oldest first, up to the newest (the first 500 alone hid every later decision); decisions
    made at the same time keep the order they were made in, across a page's end too."""
    database = db_name("dispatcher")
    settings = service_settings(
        Settings, infra, namespace, database, link_secret="test-link-secret"
    )
    times = [T0 + timedelta(seconds=n // 2) for n in range(7)]  # pairs share a time
    docs = [
        {"_id": f"req-{n}:1:-", "customer_id": "cust-x", "at": at, "outcome": "sent", "n": n}
        for n, at in enumerate(times)
    ]
    # Written out of time order, but each pair sharing a time in its own order.
    written = [docs[n] for n in (6, 4, 5, 2, 3, 0, 1)]
    await mongo[database]["decisions"].insert_many(
        [*written, {**docs[0], "_id": "other", "customer_id": "cust-y"}]
    )
    async with running(create_app(settings)) as http:
        seen: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3, **({"after": cursor} if cursor else {})}
            r = await http.get("/v1/decisions/customers/cust-x", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            assert len(body["items"]) <= 3 and all("_id" not in d for d in body["items"])
            seen += [d["n"] for d in body["items"]]
            pages += 1
            cursor = body["next"]
            if cursor is None:
                break
        assert seen == list(range(7)) and pages == 3

        r = await http.get("/v1/decisions/customers/cust-x", params={"after": "not-a-cursor"})
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["field"] == "after"
        r = await http.get("/v1/decisions/customers/cust-x", params={"limit": 501})
        assert r.status_code == 422 and r.json()["field"] == "limit"
