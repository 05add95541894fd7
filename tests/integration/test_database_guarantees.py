"""What every service assumes of its database, checked on the one `make test` runs.

ARCHITECTURE.md promises single-document atomic writes and findOneAndUpdate claims; the ledgers,
timers, request claims and ETags rest on them. FerretDB v1 is built with a patch for both
(docs/architecture.md), and these tests hold it to them the way MongoDB behaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pymongo import AsyncMongoClient, ReplaceOne, ReturnDocument

Client = AsyncMongoClient[dict[str, Any]]


async def test_a_conditional_write_succeeds_for_one_of_many_concurrent_writers(
    mongo: Client, db_name: Callable[[str], str]
) -> None:
    coll = mongo[db_name("guarantees")]["rows"]
    await coll.insert_many([{"_id": f"row-{i}", "version": 1, "owner": None} for i in range(5)])

    async def take(row: str, who: int) -> bool:
        won = await coll.find_one_and_update(
            {"_id": row, "version": 1},
            {"$set": {"version": 2, "owner": who}},
            return_document=ReturnDocument.AFTER,
        )
        return won is not None

    for i in range(5):
        wins = await asyncio.gather(*(take(f"row-{i}", who) for who in range(12)))
        assert sum(wins) == 1, f"row-{i}: {sum(wins)} writers took the same version"
        stored = await coll.find_one({"_id": f"row-{i}"})
        assert stored is not None and stored["version"] == 2
        assert wins[stored["owner"]] is True


async def test_concurrent_increments_are_all_counted(
    mongo: Client, db_name: Callable[[str], str]
) -> None:
    coll = mongo[db_name("guarantees")]["counters"]
    await coll.insert_one({"_id": "c", "n": 0})
    await asyncio.gather(*(coll.update_one({"_id": "c"}, {"$inc": {"n": 1}}) for _ in range(50)))
    assert (await coll.find_one({"_id": "c"})) == {"_id": "c", "n": 50}


async def test_lookups_by_id_keep_their_meaning_beside_other_conditions(
    mongo: Client, db_name: Callable[[str], str]
) -> None:
    coll = mongo[db_name("guarantees")]["docs"]
    await coll.insert_many([{"_id": f"d{i}", "v": i % 3} for i in range(30)])

    got = [d["_id"] async for d in coll.find({"_id": {"$in": ["d1", "d2", "d4", "nope"]}})]
    assert sorted(got) == ["d1", "d2", "d4"]
    got = [d["_id"] async for d in coll.find({"_id": {"$in": ["d1", "d2", "d4"]}, "v": 1})]
    assert sorted(got) == ["d1", "d4"]
    assert await coll.find_one({"_id": "d2", "v": 0}) is None
    assert (await coll.update_one({"_id": "d2", "v": 0}, {"$set": {"v": 9}})).matched_count == 0
    assert (await coll.delete_many({"_id": {"$in": ["d3", "d5"]}, "v": 0})).deleted_count == 1
    assert await coll.count_documents({}) == 29


async def test_a_bulk_write_of_more_updates_than_pooled_connections_completes(
    mongo: Client, db_name: Callable[[str], str]
) -> None:
    coll = mongo[db_name("guarantees")]["bulk"]
    await coll.insert_many([{"_id": f"b{i}", "v": 0} for i in range(300)])
    result = await asyncio.wait_for(
        coll.bulk_write(
            [ReplaceOne({"_id": f"b{i}", "v": 0}, {"v": i + 1}) for i in range(300)],
            ordered=False,
        ),
        timeout=60,
    )
    assert result.modified_count == 300
    assert await coll.find_one({"_id": "b299"}) == {"_id": "b299", "v": 300}
