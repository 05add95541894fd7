"""Scheduler on the real broker and database: event triggers, coalescing, pause, versions."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import httpx
from pymongo import AsyncMongoClient
from test_scheduler_support import (
    Doc,
    Publisher,
    Requests,
    active_campaign,
    campaign_body,
)

from support import eventually


async def test_filter_matches_one_change_and_not_another(
    publisher: Publisher,
    requests: Requests,
    client: httpx.AsyncClient,
) -> None:
    cid = await active_campaign(
        client, trigger={"event_types": ["case.updated"], "filter": 'case.status == "delayed"'}
    )
    await publisher.change("case-f", 1, "on time", ["cust-1"])
    await publisher.change("case-f", 2, "delayed", ["cust-1"])
    # Same case, same partition: once version 2's request is here, version 1 was judged.
    got = await requests.wait_for(lambda items: bool(items))
    assert [(r.campaign.id, r.case_version) for r in got] == [(cid, 2)]
    assert got[0].customer_id == "cust-1" and got[0].trigger_key == "case-f:2"


async def test_a_late_change_triggers_no_event_campaign(
    publisher: Publisher,
    requests: Requests,
    client: httpx.AsyncClient,
) -> None:
    cid = await active_campaign(client, trigger={"event_types": ["appointment.booked"]})
    # A booking that reached ingest after the case was resolved: no "engineer booked".
    await publisher.change("case-l", 3, "resolved", ["cust-1"], "appointment.booked", late=True)
    await publisher.change("case-l", 4, "booked again", ["cust-1"], "appointment.booked")
    # Same case, same partition: once version 4's request is here, version 3 was judged.
    got = await requests.wait_for(lambda items: bool(items))
    assert [(r.campaign.id, r.case_version) for r in got] == [(cid, 4)]


async def test_replayed_change_reuses_the_request_id(
    publisher: Publisher,
    requests: Requests,
    client: httpx.AsyncClient,
) -> None:
    await active_campaign(client)
    await publisher.change("case-r", 1, "open", ["cust-1", "cust-2"])
    await publisher.change("case-r", 1, "open", ["cust-1", "cust-2"])
    got = await requests.wait_for(lambda items: len(items) >= 4)
    assert len({r.request_id for r in got}) == 2


async def test_rapid_changes_inside_the_window_give_one_request_with_the_latest_version(
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
    client: httpx.AsyncClient,
) -> None:
    db = db_name("scheduler")
    cid = await active_campaign(
        client, timing={"coalesce_seconds": 2, "expires_after_seconds": 600}
    )
    for version, status in enumerate(("delayed", "still delayed", "out for delivery"), 1):
        await publisher.change("case-c", version, status, ["cust-1"])
    got = await requests.wait_for(lambda items: bool(items))
    assert len(got) == 1
    (req,) = got
    assert req.campaign.id == cid and req.case_version == 3
    assert req.case_state is not None and req.case_state.status == "out for delivery"
    assert req.expires_at is not None and req.not_before is not None

    # The window's row is closed; a later poll finds nothing more to send.
    async def closed() -> Doc | None:
        return await mongo[db]["timers"].find_one({"kind": "coalesce", "state": "fired"})

    row = await eventually(closed)
    assert row["case_version"] == 3
    await app_timer_poll(client)
    assert len(await requests.poll()) == 1

    # A change after the window opens a new one and gets its own request.
    await publisher.change("case-c", 4, "delivered", ["cust-1"])
    got = await requests.wait_for(lambda items: len(items) >= 2)
    assert [r.case_version for r in got] == [3, 4]


async def app_timer_poll(client: httpx.AsyncClient) -> None:
    """Let the running app's poller run: its fire_due must settle nothing."""
    app: Any = client._transport.app  # type: ignore[attr-defined]
    assert await app.state.timer_service.fire_due() == 0


async def test_paused_campaign_emits_nothing(
    publisher: Publisher,
    requests: Requests,
    client: httpx.AsyncClient,
) -> None:
    paused = await active_campaign(client, name="paused")
    r = await client.post(f"/v1/campaigns/{paused}/pause")
    assert r.status_code == 200 and r.json()["status"] == "paused"
    live = await active_campaign(client, name="live")
    await publisher.change("case-p", 1, "open", ["cust-1"])
    # Both campaigns are judged in the same handler call: the live one's request proves it.
    got = await requests.wait_for(lambda items: bool(items))
    assert {r.campaign.id for r in got} == {live}

    r = await client.post(f"/v1/campaigns/{paused}/resume")
    assert r.status_code == 200 and r.json()["status"] == "active"
    await publisher.change("case-p", 2, "closed", ["cust-1"])
    got = await requests.wait_for(lambda items: len(items) >= 3)
    assert {(r.campaign.id, r.case_version) for r in got} == {
        (live, 1),
        (live, 2),
        (paused, 2),
    }


async def test_update_is_a_new_version_and_running_contacts_keep_theirs(
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
    client: httpx.AsyncClient,
) -> None:
    db = db_name("scheduler")
    cid = await active_campaign(client, timing={"delay_seconds": 1})
    await publisher.change("case-v", 1, "open", ["cust-1"])

    async def triggered() -> Doc | None:
        return await mongo[db]["timers"].find_one({"kind": "delay"})

    # The delayed contact was triggered under version 1; save version 2 meanwhile.
    await eventually(triggered)
    r = await client.get(f"/v1/campaigns/{cid}")
    assert r.headers["ETag"] == '"1"'
    body = campaign_body(
        timing={"delay_seconds": 1},
        messages={"sms": {"en": {"body": "v2 {{ case.status }}"}}},
    )

    r = await client.put(f"/v1/campaigns/{cid}", json=body, headers={"If-Match": '"1"'})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.headers["ETag"] == '"2"'
    assert r.json()["status"] == "active"
    await publisher.change("case-v", 2, "closed", ["cust-1"])
    got = await requests.wait_for(lambda items: len(items) >= 2)
    by_version = {req.case_version: req.campaign for req in got}
    assert by_version[1].version == 1 and "v2" not in by_version[1].messages["sms"]["en"].body
    assert by_version[2].version == 2 and by_version[2].messages["sms"]["en"].body.startswith("v2")


async def test_send_rate_paces_event_triggered_requests_and_replays_take_no_slot(
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
    client: httpx.AsyncClient,
) -> None:
    db = db_name("scheduler")
    customers = [f"cust-{i}" for i in range(6)]
    paced = await active_campaign(client, name="paced", limits={"rate_per_second": 2})
    await publisher.change("case-r", 1, "open", customers)
    await publisher.change("case-r", 1, "open", customers)  # a replay
    got = await requests.wait_for(lambda items: len(items) >= 6, within=60)
    # Spaced at 1/rate, from one slot document shared by every replica.
    slots = sorted(r.not_before for r in got if r.not_before is not None)
    assert len(slots) == 6
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(slots)]
    assert all(abs(g - 0.5) < 0.01 for g in gaps), gaps
    pace = await mongo[db]["pace"].find_one({"_id": paced})
    assert pace is not None
    assert abs(pace["next"] - slots[-1].timestamp() - 0.5) < 0.01  # the replay took none
    await publisher.change("case-r", 2, "open", ["cust-0"])
    got = await requests.wait_for(lambda items: len(items) >= 7, within=30)
    assert len({r.request_id for r in got}) == len(got) == 7


async def test_send_rate_paces_coalesced_requests_when_their_windows_close(
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
    client: httpx.AsyncClient,
) -> None:
    db = db_name("scheduler")
    cid = await active_campaign(
        client, limits={"rate_per_second": 1}, timing={"coalesce_seconds": 1}
    )
    for case in ("case-c1", "case-c2", "case-c3"):
        await publisher.change(case, 1, "open", ["cust-1"])
    await publisher.change("case-c1", 2, "open", ["cust-1"])  # joins its window: no slot
    got = await requests.wait_for(lambda items: len(items) >= 3, within=60)
    slots = sorted(r.not_before for r in got if r.not_before is not None)
    assert len(slots) == 3
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(slots)]
    assert all(g >= 0.99 for g in gaps), gaps
    assert {(r.case_id, r.case_version) for r in got} == {
        ("case-c1", 2),
        ("case-c2", 1),
        ("case-c3", 1),
    }
    pace = await mongo[db]["pace"].find_one({"_id": cid})
    assert pace is not None and abs(pace["next"] - slots[-1].timestamp() - 1) < 0.01
