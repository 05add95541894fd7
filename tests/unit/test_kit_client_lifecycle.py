"""Starting and stopping a Kafka client: a cancelled or failed start, or a cancelled stop,
leaves nothing open."""

from __future__ import annotations

import asyncio

import pytest

from herald_kit import start_client, stop_client


class _Client:
    """A client whose start takes until the test lets it finish (or fails)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.stopping = asyncio.Event()
        self.stop_released = asyncio.Event()
        self.stop_released.set()
        self.connecting = asyncio.Event()
        self.release = asyncio.Event()
        self.open = False
        self.stopped = False

    async def start(self) -> None:
        self.open = True  # the bootstrap connection
        self.connecting.set()
        await self.release.wait()
        if self.fail:
            raise ConnectionError("no broker")

    async def stop(self) -> None:
        # aiokafka marks the client closed first, then flushes and closes its connections.
        self.stopped = True
        self.stopping.set()
        await self.stop_released.wait()
        self.open = False


async def test_a_start_cancelled_midway_finishes_then_closes_the_client() -> None:
    client = _Client()
    caller = asyncio.create_task(start_client(client))
    await client.connecting.wait()
    caller.cancel()
    await asyncio.sleep(0.01)
    # Cancelling aiokafka's start here would strand its bootstrap connection: it goes on.
    assert not caller.done() and client.open
    client.release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert client.stopped and not client.open


async def test_a_failed_start_closes_the_client_and_raises() -> None:
    client = _Client(fail=True)
    client.release.set()
    with pytest.raises(ConnectionError):
        await start_client(client)
    assert client.stopped and not client.open


async def test_a_started_client_stays_open() -> None:
    client = _Client()
    client.release.set()
    await start_client(client)
    assert client.open and not client.stopped


async def test_a_stop_cancelled_midway_still_closes_the_connections() -> None:
    client = _Client()
    client.release.set()
    await start_client(client)
    client.stop_released.clear()
    caller = asyncio.create_task(stop_client(client))
    await client.stopping.wait()
    caller.cancel()
    await asyncio.sleep(0.01)
    assert not caller.done() and client.open  # still flushing
    client.stop_released.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not client.open


class _AdminClient:
    """aiokafka's admin client: `close`, not `stop`."""

    def __init__(self) -> None:
        self.closed = False

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


async def test_an_admin_client_is_closed() -> None:
    admin = _AdminClient()
    await start_client(admin)
    await stop_client(admin)
    assert admin.closed
