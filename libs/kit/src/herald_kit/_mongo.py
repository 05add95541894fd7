"""MongoDB through PyMongo's async API, limited to what MongoDB and FerretDB v1 both support."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from herald_kit._metrics import DB_COMMAND_SECONDS, DB_COMMANDS, labelled

Doc = dict[str, Any]

# Commands a driver sends for itself (handshakes, heartbeats, cursor clean-up), not the service.
_DRIVER_COMMANDS = frozenset({"hello", "ismaster", "isMaster", "ping", "endSessions", "saslStart"})


class CommandMetrics(monitoring.CommandListener):
    """Counts the service's database commands by command and collection, with their latency.

    Collection names are fixed per service, so the labels stay few; a command names its
    collection as the value of its first key (`{"find": "attempts", ...}`), getMore under
    `collection`.
    """

    def __init__(self) -> None:
        self._collections: dict[int, str] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        """Remember which collection the command is about until it ends."""
        if event.command_name not in _DRIVER_COMMANDS:
            target = event.command.get(event.command_name)
            if not isinstance(target, str):
                target = event.command.get("collection")
            self._collections[event.request_id] = target if isinstance(target, str) else ""

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Count a command that answered."""
        self._count(event, "ok")

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Count a command the database refused (an upsert's duplicate key among them; an insert's
        duplicate key answers ok, with write errors)."""
        self._count(event, "error")

    def _count(
        self, event: monitoring.CommandSucceededEvent | monitoring.CommandFailedEvent, outcome: str
    ) -> None:
        collection = self._collections.pop(event.request_id, None)
        if collection is None:
            return
        labelled(DB_COMMANDS, event.command_name, collection, outcome).inc()
        labelled(DB_COMMAND_SECONDS, event.command_name).observe(event.duration_micros / 1e6)


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
        event_listeners=[CommandMetrics()],
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
