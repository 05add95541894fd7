"""Shared fixtures: the real Kafka and database that `make test` starts, isolated per test."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import Any

import pytest
import pytest_timeout
from pymongo import AsyncMongoClient

from herald_kit import delete_namespace, ensure_topics

KAFKA = os.environ.get("HERALD_TEST_KAFKA", "127.0.0.1:9092")
MONGO = os.environ.get("HERALD_TEST_MONGO", "mongodb://127.0.0.1:27017/")


def _reachable(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def infra() -> dict[str, str]:
    """The real broker and database; fail (never skip) when they are not up."""
    mongo_hostport = MONGO.split("//", 1)[1].split("/", 1)[0]
    targets = (("Kafka", KAFKA), ("FerretDB", mongo_hostport))
    missing = [name for name, hp in targets if not _reachable(hp)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not reachable ({KAFKA}, {MONGO}); "
            "run the suite through `make test`, which starts them."
        )
    return {"kafka": KAFKA, "mongo": MONGO}


# How long before pytest-timeout ends a hung test its asyncio tasks are printed: pytest-timeout
# prints the threads' stacks only, and a hung async test waits in the event loop's select.
HANG_REPORT_LEAD_SECONDS = 10.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every async test the hang report."""
    for item in items:
        if item.get_closest_marker("asyncio") is not None and isinstance(item, pytest.Function):
            item.fixturenames.append("_hang_report")


@pytest.fixture
async def _hang_report(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Shortly before the test's timeout, print every task's await chain to stderr."""
    # pytest-timeout's own reading of the marker, --timeout, PYTEST_TIMEOUT and the ini.
    timeout = float(pytest_timeout._get_item_settings(request.node).timeout or 0)
    if timeout <= HANG_REPORT_LEAD_SECONDS:
        yield
        return
    loop = asyncio.get_running_loop()
    handle = loop.call_later(timeout - HANG_REPORT_LEAD_SECONDS, _print_tasks, request.node.nodeid)
    try:
        yield
    finally:
        handle.cancel()


def _await_chain(task: asyncio.Task[Any]) -> Iterator[FrameType]:
    """The frames a task is suspended in, outermost first (Task.get_stack gives only the first)."""
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            yield frame
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)


def _print_tasks(nodeid: str) -> None:
    out = sys.stderr
    print(f"\n+++ {nodeid}: still running; where each asyncio task waits +++", file=out)
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}", file=out)
        for frame in _await_chain(task):
            code = frame.f_code
            print(f"    {code.co_filename}:{frame.f_lineno} in {code.co_name}", file=out)


@pytest.fixture
async def namespace(infra: dict[str, str]) -> AsyncIterator[str]:
    """A unique topic namespace with every topic created (2 partitions each, for speed), deleted
    after the test.

    Deleted because the test broker holds every partition it has in its heap (about 24 KB
    each, measured): the suite's 200 namespaces of 48 partitions would leave some 230 MB of
    the broker's 512 MB heap taken by the end of the run.
    """
    ns = f"t{uuid.uuid4().hex[:10]}."
    await ensure_topics(infra["kafka"], namespace=ns, partitions=2)
    yield ns
    await delete_namespace(infra["kafka"], ns)
    # A stack started in this namespace names its databases after it (`db_suffix`).
    await _drop_databases(infra["mongo"], suffix="_" + ns.strip("."))


@pytest.fixture
async def mongo(infra: dict[str, str]) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """A client to the test database server."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra["mongo"], tz_aware=True)
    yield client
    await client.close()


@pytest.fixture
async def db_name(infra: dict[str, str]) -> AsyncIterator[Callable[[str], str]]:
    """Unique database names per test, each dropped after it."""
    suffix = uuid.uuid4().hex[:10]
    yield lambda service: f"t_{service}_{suffix}"
    await _drop_databases(infra["mongo"], suffix=f"_{suffix}")


async def _drop_databases(uri: str, *, suffix: str) -> None:
    """Drop the databases a test made. FerretDB on SQLite keeps a file and a connection pool
    open for every database it has, and the suite makes some 250 of them."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        for name in await client.list_database_names():
            if name.endswith(suffix):
                await client.drop_database(name)
    finally:
        await client.close()


CHROMIUM = os.environ.get("HERALD_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    """Debian's headless Chromium (deploy/local/browser.sh installs it) driven by Playwright."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield b
        finally:
            await b.close()
