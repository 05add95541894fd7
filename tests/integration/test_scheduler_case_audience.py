"""Audiences over the customers' cases, on the real broker and database: a scheduled fire reads
cases.state.v1 as well as contacts.preferences.v1, once per customer, and resumes after a crash
without duplicates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pymongo import AsyncMongoClient
from test_scheduler_support import (
    Doc,
    Publisher,
    Requests,
    active_campaign,
    publish_audience,
    scheduler,
)

from herald_contracts import CASE_STATE, CaseState, Topics
from support import eventually

DELAYED = 'cases.exists(c, c.status == "delayed")'


async def publish_case(
    publisher: Publisher, case_id: str, version: int, status: str, customers: list[str]
) -> None:
    """A case's latest state, as ingest publishes it to the compacted cases.state.v1."""
    state = CaseState(
        case_id=case_id,
        version=version,
        customer_ids=customers,
        status=status,
        updated_at=datetime.now(UTC),
    )
    await publisher.send(CASE_STATE, state, case_id)


def once_soon() -> dict[str, str]:
    at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()  # still ahead at activation
    return {"kind": "schedule", "at": at, "time_zone": "UTC"}


async def test_an_audience_over_cases_contacts_exactly_the_customers_whose_cases_match(
    namespace: str,
    infra: dict[str, str],
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    db = db_name("scheduler")
    await publish_audience(publisher, ["a", "b", "c", "d", "e", "f", "g"])
    await publish_audience(publisher, ["g"], locale="nl", version=2)
    await publish_case(publisher, "case-1", 1, "delayed", ["a", "b"])  # shared by two
    await publish_case(publisher, "case-2", 1, "open", ["c"])  # another status
    await publish_case(publisher, "case-3", 1, "delayed", ["d"])
    await publish_case(publisher, "case-3", 2, "resolved", ["d"])  # no longer delayed
    await publish_case(publisher, "case-4", 1, "delayed", ["e"])
    await publisher.producer.send_and_wait(  # case-4 erased: a tombstone
        Topics.CASES_STATE.name(namespace), None, key=b"case-4"
    )
    await publish_case(publisher, "case-5", 1, "open", ["b"])  # b: one of two cases matches
    await publish_case(publisher, "case-6", 1, "delayed", ["g"])  # g: Dutch, see the filter
    # f has no case at all.
    fires = mongo[db]["fires"]
    async with scheduler(infra, namespace, db) as client:
        app = client._transport.app  # type: ignore[attr-defined]
        cid = await active_campaign(
            client, trigger={**once_soon(), "audience": f'{DELAYED} && contact.locale == "en"'}
        )

        async def done() -> Doc | None:
            return await fires.find_one({"campaign_id": cid, "done": True})

        row = await eventually(done)
        assert row["outcome"] == "completed" and row["requested"] == 2
        first = await requests.wait_for(lambda items: len(items) >= 2)
        assert sorted(r.customer_id for r in first) == ["a", "b"]
        ids = {r.request_id for r in first}
        assert len(ids) == 2

        # A doubled fire (a replay of the same scheduled time) emits nothing new.
        await app.state.schedules._fire(cid, row["scheduled_at"])
        # And a fire run again from the start (its checkpoint lost) re-emits the same ids,
        # which the dispatcher drops. (The runner stops first, so this run is the only one.)
        await app.state.schedules.stop()
        await fires.update_one(
            {"_id": row["_id"]}, {"$set": {"done": False, "cp_part": 0, "cp_off": 0}}
        )
        assert await app.state.schedules.fanout.run(row["_id"]) == 2
        items = await requests.wait_for(lambda items: len(items) >= 4)
    assert {r.request_id for r in items} == ids
    assert Counter(r.customer_id for r in items) == {"a": 2, "b": 2}
    assert all(r.case_id is None and r.trigger_key == row["trigger_key"] for r in items)


async def test_a_killed_case_audience_fan_out_resumes_and_completes_without_duplicates(
    namespace: str,
    infra: dict[str, str],
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    db = db_name("scheduler")
    customers = [f"cust-{i:03d}" for i in range(80)]
    await publish_audience(publisher, customers)
    # Every other customer has a delayed case; the rest an open one.
    for i, customer in enumerate(customers):
        await publish_case(publisher, f"case-{i}", 1, "delayed" if i % 2 else "open", [customer])
    audience = [c for i, c in enumerate(customers) if i % 2]
    fires = mongo[db]["fires"]
    # Ten members per batch (five of them in the audience) at ten requests a second: four
    # seconds, time to kill the replica midway.
    async with scheduler(infra, namespace, db, fanout_batch=10) as client:
        cid = await active_campaign(
            client,
            trigger={**once_soon(), "audience": DELAYED},
            limits={"rate_per_second": 10},
        )

        async def midway() -> Doc | None:
            return await fires.find_one({"campaign_id": cid, "requested": {"$gte": 10}})

        await eventually(midway)
    row = await fires.find_one({"campaign_id": cid})
    assert row is not None and row["done"] is False and row["requested"] < len(audience)
    assert row["case_ends"]  # the cases the fire sees are pinned with it

    # Cases that change after the fire do not change its audience. The replica that resumes
    # reads the partitions after the first in its read-ahead worker process (as a large fire
    # does), snapshots included for the filter, from the checkpoint's offset on.
    await publish_case(publisher, "case-0", 2, "delayed", [customers[0]])
    async with scheduler(infra, namespace, db, fanout_batch=10, fanout_read_ahead_records=1):

        async def done() -> bool:
            return await fires.count_documents({"campaign_id": cid, "done": True}) == 1

        await eventually(done)
        items = await requests.wait_for(
            lambda items: {r.customer_id for r in items} >= set(audience)
        )
    assert {r.customer_id for r in items} == set(audience)
    ids_per_customer = {c: {r.request_id for r in items if r.customer_id == c} for c in audience}
    assert all(len(ids) == 1 for ids in ids_per_customer.values())
    assert len({r.request_id for r in items}) == len(audience)
    assert len(items) - len(audience) <= 2 * 10  # at most the batches in flight, again
    final = await fires.find_one({"campaign_id": cid})
    assert final is not None and final["requested"] == len(audience)
