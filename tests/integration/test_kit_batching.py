"""The kit's coalescers on the real database: concurrent calls share one command, and every
caller still gets its own answer (inserted or duplicate; counts that add up exactly)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import AsyncMongoClient

from herald_kit import CounterBatcher, InsertBatcher
from herald_kit._batching import _op_field

Client = AsyncMongoClient[dict[str, Any]]


async def test_concurrent_increments_add_up_exactly_per_document(
    mongo: Client, db_name: Callable[[str], str]
) -> None:
    coll = mongo[db_name("batching")]["counters"]
    counters = CounterBatcher(coll)
    await coll.insert_one({"_id": "b", "sent": 5})  # an existing document keeps its count
    # 300 concurrent calls: two in three count for "a", one in three for "b".
    targets = [("a", "cap") if i % 3 else ("b", "quiet") for i in range(300)]
    adds = [counters.add(key, {"sent": 1, f"by_reason.{why}": 2}) for key, why in targets]
    await asyncio.gather(*adds)
    docs = {d["_id"]: d async for d in coll.find({})}
    assert docs["a"]["sent"] == 200 and docs["a"]["by_reason"] == {"cap": 400}
    assert docs["b"]["sent"] == 5 + 100 and docs["b"]["by_reason"] == {"quiet": 200}


async def test_concurrent_inserts_answer_each_caller_inserted_or_duplicate(
    mongo: Client, db_name: Callable[[str], str]
) -> None:
    coll = mongo[db_name("batching")]["guards"]
    guards = InsertBatcher(coll)
    await coll.insert_one({"_id": "seen-before"})
    ids = ["seen-before", *(f"g-{i % 50}" for i in range(120))]
    answers = await asyncio.gather(*(guards.insert({"_id": i}) for i in ids))
    assert answers[0] is False  # already there
    # Each id is inserted by exactly one of the callers naming it.
    firsts = [a for i, a in zip(ids[1:], answers[1:], strict=True) if a]
    assert len(firsts) == 50 and await coll.count_documents({}) == 51
    assert sorted(i for i, a in zip(ids[1:], answers[1:], strict=True) if a) == sorted(
        f"g-{i}" for i in range(50)
    )


async def test_a_named_increment_is_applied_once_and_its_record_is_removed_later(
    mongo: Client, db_name: Callable[[str], str]
) -> None:
    coll = mongo[db_name("batching")]["counters"]
    counters = CounterBatcher(coll)
    await counters.add("c", {"sent": 1}, op="st|m1|sent")
    # The same operation again (a retry whose first answer was lost), merged with a new one.
    await asyncio.gather(
        counters.add("c", {"sent": 1}, op="st|m1|sent"),
        counters.add("c", {"sent": 1}, op="st|m2|sent"),
    )
    assert (await coll.find_one({"_id": "c"}) or {})["sent"] == 2
    # Answered operations are removed by the next updates: the document does not grow.
    for i in range(3, 30):
        await counters.add("c", {"sent": 1}, op=f"st|m{i}|sent")
    doc = await coll.find_one({"_id": "c"}) or {}
    assert doc["sent"] == 29
    assert len(doc["ops"]) == 1  # the last one's, until the next update


async def test_operations_left_by_replicas_that_restarted_go_once_older_than_their_retention(
    mongo: Client, db_name: Callable[[str], str]
) -> None:
    coll = mongo[db_name("batching")]["counters"]
    kept = timedelta(days=30)
    now = datetime(2026, 3, 1, tzinfo=UTC)

    def batcher() -> CounterBatcher:
        return CounterBatcher(coll, ops_kept=kept, clock=lambda: now)

    # Three runs of a replica, a day apart: each counts 200 events and restarts before an
    # update of its own could remove their records.
    for run in range(3):
        counters = batcher()
        await asyncio.gather(
            *(counters.add("c", {"sent": 1}, op=f"st|m{run}-{i}|sent") for i in range(200))
        )
        now += timedelta(days=1)
    doc = await coll.find_one({"_id": "c"}) or {}
    assert doc["sent"] == 600 and len(doc["ops"]) == 600
    assert all(isinstance(at, datetime) for at in doc["ops"].values())
    # Within the retention a record still keeps a retry from counting twice.
    await batcher().add("c", {"sent": 1}, op="st|m0-0|sent")
    assert (await coll.find_one({"_id": "c"}) or {})["sent"] == 600

    # A month after the first two runs' counts, the next update of the document, by any
    # replica, removes their records; the last run's are younger and stay.
    now = datetime(2026, 3, 2, 12, tzinfo=UTC) + kept
    await batcher().add("c", {"sent": 1}, op="st|m-new|sent")
    doc = await coll.find_one({"_id": "c"}) or {}
    assert doc["sent"] == 601
    assert len(doc["ops"]) == 200 + 1
    # A replica that keeps running looks again later: the last run's records go too.
    counters = batcher()
    await counters.add("c", {"sent": 1}, op="st|m-later|sent")
    now += timedelta(days=2)
    await counters.add("c", {"sent": 1}, op="st|m-last|sent")
    doc = await coll.find_one({"_id": "c"}) or {}
    assert doc["sent"] == 603
    # The other replica's, younger, and the last one's, until this replica's next update.
    assert {f"ops.{name}" for name in doc["ops"]} == {
        _op_field("st|m-new|sent"),
        _op_field("st|m-last|sent"),
    }
