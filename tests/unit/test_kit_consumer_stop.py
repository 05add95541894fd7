"""A service told to stop stops, even when the broker never answers its last commit.

Kubernetes sends SIGTERM and waits its grace period; a stop held for good by a commit the
broker does not answer ends in a SIGKILL instead, with the producer unflushed and the group
never left. What stays uncommitted is redelivered after the restart, and the handlers'
idempotency absorbs it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition

from herald_kit import ServiceSettings, _concurrent
from herald_kit._concurrent import ConcurrentConsumerLoop, _Partition


class _SilentBroker:
    """Stands in for aiokafka's consumer: polls find nothing, and no commit is ever answered."""

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.commits: list[dict[TopicPartition, int]] = []
        self.stopped = False

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        await asyncio.Event().wait()

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    async def stop(self) -> None:
        self.stopped = True


async def _handled(record: Any) -> None:
    return None


async def test_a_stop_gives_up_a_commit_the_broker_never_answers_and_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_concurrent, "STOP_COMMIT_SECONDS", 0.2)
    tp = TopicPartition("outbound.sms.v1", 0)
    broker = _SilentBroker(tp)
    loop = ConcurrentConsumerLoop(
        settings=ServiceSettings(),
        producer=None,  # type: ignore[arg-type]  # nothing is published: no record arrives
        group="sms-sender",
        topics=[],
        handler=_handled,
    )
    # Records up to offset 41 were handled since the last commit.
    part = _Partition()
    part.add(41)
    part.finish(41)
    loop._parts[tp] = part
    loop._consumer = broker  # type: ignore[assignment]
    loop._task = asyncio.create_task(loop._run())
    await asyncio.sleep(0.05)

    # Waited on, not cancelled: a cancelled stop would end the loop's commit by itself.
    stopping = asyncio.create_task(loop.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    if not done:
        stopping.cancel()
    assert done, "the stop still waits on the commit"
    assert broker.commits == [{tp: 42}]  # the stop tried to commit what was handled
    assert broker.stopped  # and left the group all the same
