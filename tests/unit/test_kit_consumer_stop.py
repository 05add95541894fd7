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

from herald_kit import Runtime, ServiceSettings, _concurrent
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


async def _running(broker: _SilentBroker) -> ConcurrentConsumerLoop:
    """A running loop on `broker` that has handled records up to offset 41 since its last
    commit."""
    loop = ConcurrentConsumerLoop(
        settings=ServiceSettings(),
        producer=None,  # type: ignore[arg-type]  # nothing is published: no record arrives
        group="sms-sender",
        topics=[],
        handler=_handled,
    )
    part = _Partition()
    part.add(41)
    part.finish(41)
    loop._parts[broker.tp] = part
    loop._consumer = broker  # type: ignore[assignment]
    loop._task = asyncio.create_task(loop._run())
    await asyncio.sleep(0.05)
    return loop


async def test_a_stop_gives_up_a_commit_the_broker_never_answers_and_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_concurrent, "STOP_COMMIT_SECONDS", 0.2)
    tp = TopicPartition("outbound.sms.v1", 0)
    broker = _SilentBroker(tp)
    loop = await _running(broker)

    # Waited on, not cancelled: a cancelled stop would end the loop's commit by itself.
    stopping = asyncio.create_task(loop.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    if not done:
        stopping.cancel()
    assert done, "the stop still waits on the commit"
    assert broker.commits == [{tp: 42}]  # the stop tried to commit what was handled
    assert broker.stopped  # and left the group all the same


class _SlowBroker(_SilentBroker):
    """Answers a commit, but only after a while."""

    def __init__(self, tp: TopicPartition) -> None:
        super().__init__(tp)
        self.answered: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        await asyncio.sleep(0.3)
        self.answered.append(dict(offsets))


async def test_a_stop_whose_caller_is_cancelled_still_commits_leaves_and_passes_it_on() -> None:
    tp = TopicPartition("outbound.sms.v1", 0)
    broker = _SlowBroker(tp)
    loop = await _running(broker)

    stopping = asyncio.create_task(loop.stop())
    await asyncio.sleep(0.1)  # the last commit is on its way
    assert broker.commits == [{tp: 42}] and not broker.answered
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stopping, timeout=5)
    # The cancellation neither cut the last commit short nor kept the consumer in its group,
    # and it reached the caller instead of being swallowed.
    assert broker.answered == [{tp: 42}]
    assert broker.stopped


class _Step:
    def __init__(self, name: str, log: list[str], *, wait: float = 0.0, fail: bool = False) -> None:
        self.name, self.log, self.wait, self.fail = name, log, wait, fail

    async def stop(self) -> None:
        await asyncio.sleep(self.wait)
        if self.fail:
            raise RuntimeError(f"{self.name} failed")
        self.log.append(self.name)

    close = stop


def _runtime(done: list[str], *, consumer_wait: float = 0.0, fail: bool = False) -> Runtime:
    runtime = Runtime(ServiceSettings(), "sms-sender")
    runtime.consumers = [
        _Step("consumer", done, wait=consumer_wait, fail=fail)  # type: ignore[list-item]
    ]
    runtime.producer = _Step("producer flushed", done)  # type: ignore[assignment]
    runtime.mongo = _Step("database closed", done)  # type: ignore[assignment]

    @runtime.on_stop
    async def _hook() -> None:
        done.append("stop hook")

    return runtime


async def test_a_cancelled_service_stop_still_flushes_the_producer_and_closes_the_db() -> None:
    done: list[str] = []
    runtime = _runtime(done, consumer_wait=0.5)
    stopping = asyncio.create_task(runtime.stop())
    await asyncio.sleep(0.1)  # inside the consumer's stop
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stopping, timeout=5)
    assert done == ["stop hook", "producer flushed", "database closed"]
    assert runtime.mongo is None


async def test_a_failed_step_of_a_service_stop_is_raised_after_the_others_ran() -> None:
    done: list[str] = []
    runtime = _runtime(done, fail=True)
    with pytest.raises(RuntimeError, match="consumer failed"):
        await runtime.stop()
    assert done == ["stop hook", "producer flushed", "database closed"]
