"""MongoDB through PyMongo's async API, limited to what MongoDB and FerretDB v1 both support."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

Doc = dict[str, Any]


def create_client(uri: str, *, app_name: str) -> AsyncMongoClient[Doc]:
    """A client with bounded timeouts, UTC-aware datetimes and retryable writes off.

    FerretDB v1 has no sessions or transactions; single-document atomic writes, unique indexes
    and findOneAndUpdate are the tools (see docs/architecture.md).
    """
    return AsyncMongoClient(
        uri,
        appname=app_name,
        tz_aware=True,
        serverSelectionTimeoutMS=5_000,
        connectTimeoutMS=5_000,
        retryWrites=False,
    )


async def ping(client: AsyncMongoClient[Doc]) -> bool:
    """True when the database answers."""
    try:
        await asyncio.wait_for(client.admin.command("ping"), 3)
        return True
    except (TimeoutError, PyMongoError):
        return False


async def insert_if_absent(collection: AsyncCollection[Doc], doc: Doc) -> bool:
    """Insert doc; False when a unique index says it is already there."""
    try:
        await collection.insert_one(doc)
        return True
    except DuplicateKeyError:
        return False
