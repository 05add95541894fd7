"""An audience filter that fails for some customers' values does not fail silently: the fire
counts them (`audience_errors`, on the fire row and in the campaign's stats) and logs it once."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient
from test_scheduler_support import (
    Doc,
    Publisher,
    Requests,
    active_campaign,
    publish_audience,
    scheduler,
)

from support import eventually

# Dutch customers are selected; for the others the filter reads a consent topic they have
# none for, which fails to evaluate (the fire contacts them not, as it cannot tell).
PARTLY_FAILING = 'contact.locale == "nl" || contact.consents["marketing"].sms'


async def test_customers_the_audience_fails_for_are_counted_on_the_fire_and_logged_once(
    namespace: str,
    infra: dict[str, str],
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = db_name("scheduler")
    await publish_audience(publisher, ["nl-1"], locale="nl")
    await publish_audience(publisher, ["en-1", "en-2", "en-3"])
    fires = mongo[db]["fires"]
    at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    async with scheduler(infra, namespace, db) as client:
        cid = await active_campaign(
            client,
            trigger={"kind": "schedule", "at": at, "time_zone": "UTC", "audience": PARTLY_FAILING},
        )

        async def done() -> Doc | None:
            return await fires.find_one({"campaign_id": cid, "done": True})

        row = await eventually(done)
        assert row["requested"] == 1 and row["audience_errors"] == 3, row
        assert [r.customer_id for r in await requests.wait_for(lambda i: len(i) >= 1)] == ["nl-1"]

        async def stats() -> Doc | None:
            body: Doc = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
            return body if body["audience_errors"] == 3 else None

        assert (await eventually(stats))["requested"] == 1
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    warned = [line for line in lines if "could not be evaluated" in line["msg"]]
    assert len(warned) == 1 and warned[0]["audience_errors"] == 3, warned
    assert "en-1" not in out  # no customer named
