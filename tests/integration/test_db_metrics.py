"""Every service's database client counts its commands on /metrics (herald_db_commands_total),
so an SRE sees which collections a load leans on and the benchmark counts commands per SMS."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from prometheus_client import REGISTRY
from pymongo import ReturnDocument

from herald_kit import create_client, insert_if_absent


def commands(command: str, collection: str, outcome: str = "ok") -> float:
    """The counter's value for one command on one collection (0 before its first)."""
    labels = {"command": command, "collection": collection, "outcome": outcome}
    return REGISTRY.get_sample_value("herald_db_commands_total", labels) or 0.0


def answered(command: str) -> float:
    """How many commands of a kind have had their latency observed."""
    labels = {"command": command}
    return REGISTRY.get_sample_value("herald_db_command_seconds_count", labels) or 0.0


async def test_commands_are_counted_by_command_and_collection(
    infra: dict[str, str], db_name: Callable[[str], str]
) -> None:
    client = create_client(infra["mongo"], app_name="herald-test")
    # A collection of its own: labels carry the collection name, not the database.
    name = f"rows_{uuid.uuid4().hex[:8]}"
    coll = client[db_name("metrics")][name]
    finds_timed = answered("find")
    try:
        assert await insert_if_absent(coll, {"_id": "a", "n": 1})
        assert not await insert_if_absent(coll, {"_id": "a", "n": 2})  # a duplicate key
        await coll.find_one({"_id": "a"})
        await coll.find_one({"_id": "a"})
        await coll.find_one_and_update(
            {"_id": "a"}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER
        )
        await coll.insert_many([{"_id": "b"}, {"_id": "c"}])
        rows = [row async for row in coll.find({}, batch_size=1)]  # a find, then getMores
    finally:
        await client.close()

    assert len(rows) == 3
    # The duplicate insert answered ok with a write error; insert_many is one command.
    assert commands("insert", name) == 3
    assert commands("find", name) == 3
    assert commands("findAndModify", name) == 1
    assert commands("getMore", name) >= 1
    assert commands("insert", name, "error") == 0
    assert answered("find") - finds_timed >= 3  # other clients of this process may find too
