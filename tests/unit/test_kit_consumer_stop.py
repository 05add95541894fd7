"""A service told to stop stops, even when the broker never answers its last commit, and lets
the sends in flight finish first, within a bounded grace.

Kubernetes sends SIGTERM and waits its grace period; a stop held for good by a commit the
broker does not answer ends in a SIGKILL instead, with the producer unflushed and the group
never left. What stays uncommitted is redelivered after the restart, and the handlers'
idempotency absorbs it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from herald_kit import ConsumerLoop, Runtime, ServiceSettings, _concurrent
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


class _OneBatchBroker(_SilentBroker):
    """Delivers `records` in one poll, then nothing; answers every commit."""

    def __init__(self, tp: TopicPartition, records: list[Any]) -> None:
        super().__init__(tp)
        self.batches = [records]

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        if self.batches:
            return {self.tp: self.batches.pop(0)}
        return await super().getmany(timeout_ms, max_records)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


def _record(tp: TopicPartition, offset: int, key: bytes) -> Any:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, key, b"{}", None, 0, 2, [])


class _Provider:
    """A provider call per record that the test answers when it likes (or never)."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.completed: list[int] = []
        self.cancelled: list[int] = []
        self.answer = asyncio.Event()
        self.in_flight = asyncio.Event()

    async def handle(self, record: Any) -> None:
        self.started.append(record.offset)
        self.in_flight.set()
        try:
            await self.answer.wait()
        except asyncio.CancelledError:
            self.cancelled.append(record.offset)
            raise
        self.completed.append(record.offset)


def _loop(
    provider: _Provider, broker: _SilentBroker, *, plain: bool = False, grace: float = 20.0
) -> ConsumerLoop:
    """The SMS sender's loop, which handles records of different keys at once; `plain`: the
    loop that handles its records one by one in its own task (the scheduler's timers, the voice
    sender's reply callbacks)."""
    settings = ServiceSettings(consumer_stop_grace_seconds=grace)
    # The handler never fails: nothing to publish, so no producer.
    loop = (
        ConsumerLoop(
            settings=settings,
            producer=None,  # type: ignore[arg-type]
            group="scheduler-timers",
            topics=[],
            handler=provider.handle,
        )
        if plain
        else ConcurrentConsumerLoop(
            settings=settings,
            producer=None,  # type: ignore[arg-type]
            group="sms-sender",
            topics=[],
            handler=provider.handle,
            concurrency=4,
        )
    )
    loop._consumer = broker  # type: ignore[assignment]
    loop._task = asyncio.create_task(loop._run())
    return loop


@pytest.mark.parametrize(
    ("plain", "topic", "keys"),
    [
        # Offset 0 is being sent when the stop comes; offset 1 (the same customer) waits behind it.
        (False, "outbound.sms.v1", (b"cust-1", b"cust-1")),
        # Offset 0 is being handled when the stop comes; offset 1, of the same batch, waits.
        (True, "timers.requests.v1", (b"c-1", b"c-2")),
    ],
    ids=["concurrent", "plain"],
)
async def test_a_stop_lets_the_record_in_flight_finish_and_commits_it(
    plain: bool, topic: str, keys: tuple[bytes, bytes]
) -> None:
    """A deploy's SIGTERM must not cut a handler short: a provider request's ledger row would
    stay 'sending', and the redelivery could not tell whether the provider got it; a handler cut
    between two writes (a row updated, its event not yet published) leaves a half-done side
    effect."""
    tp = TopicPartition(topic, 0)
    broker = _OneBatchBroker(tp, [_record(tp, 0, keys[0]), _record(tp, 1, keys[1])])
    provider = _Provider()
    loop = _loop(provider, broker, plain=plain)
    await asyncio.wait_for(provider.in_flight.wait(), 5)

    stopping = asyncio.create_task(loop.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done(), "the stop did not wait for the record in flight"
    assert provider.cancelled == []
    provider.answer.set()  # the provider answers, the handler's work completes
    await asyncio.wait_for(stopping, 5)

    assert provider.completed == [0]  # the record in flight finished
    assert provider.started == [0]  # nothing new was started once stopping
    assert broker.commits == [{tp: 1}]  # offset 0 is committed; offset 1 is redelivered
    assert broker.stopped


@pytest.mark.parametrize(
    ("plain", "topic", "keys", "in_flight"),
    [
        (False, "outbound.sms.v1", (b"cust-1", b"cust-2"), [0, 1]),  # two customers at once
        (True, "timers.requests.v1", (b"c-1", b"c-2"), [0]),  # one by one
    ],
    ids=["concurrent", "plain"],
)
async def test_a_stop_cancels_what_outlives_the_grace_and_still_returns_in_time(
    plain: bool, topic: str, keys: tuple[bytes, bytes], in_flight: list[int]
) -> None:
    tp = TopicPartition(topic, 0)
    broker = _OneBatchBroker(tp, [_record(tp, 0, keys[0]), _record(tp, 1, keys[1])])
    provider = _Provider()  # never answers
    loop = _loop(provider, broker, plain=plain, grace=0.5)
    await asyncio.wait_for(provider.in_flight.wait(), 5)
    await asyncio.sleep(0.05)
    assert sorted(provider.started) == in_flight

    clock = asyncio.get_running_loop().time
    began = clock()
    stopping = asyncio.create_task(loop.stop())
    await asyncio.sleep(0.3)
    assert not stopping.done() and provider.cancelled == []  # within the grace: waited on
    await asyncio.wait_for(stopping, 5)
    took = clock() - began

    assert 0.5 <= took < 1.5, took  # the grace, and a margin: not held by the provider
    assert sorted(provider.cancelled) == in_flight
    assert sorted(provider.started) == in_flight  # nothing new was started once stopping
    assert broker.commits == []  # nothing finished: the batch is redelivered
    assert broker.stopped


async def test_an_idle_plain_loop_stops_without_waiting_for_its_poll() -> None:
    tp = TopicPartition("timers.requests.v1", 0)
    broker = _SilentBroker(tp)  # each poll waits its whole timeout, and finds nothing
    loop = _loop(_Provider(), broker, plain=True)
    await asyncio.sleep(0.05)
    clock = asyncio.get_running_loop().time
    began = clock()
    await asyncio.wait_for(loop.stop(), 5)
    assert clock() - began < 0.3  # not the rest of the poll's 0.5 s, nor the grace
    assert broker.stopped and broker.commits == []


async def test_a_service_stop_runs_its_loops_graces_together() -> None:
    runtime = Runtime(ServiceSettings(), "voice-sender")
    runtime.producer = _Step("producer flushed", [])  # type: ignore[assignment]
    providers = []
    for n in range(2):
        tp = TopicPartition(f"topic-{n}.v1", 0)
        provider = _Provider()  # never answers
        runtime.consumers.append(
            _loop(provider, _OneBatchBroker(tp, [_record(tp, 0, b"k")]), grace=0.6)
        )
        providers.append(provider)
    for provider in providers:
        await asyncio.wait_for(provider.in_flight.wait(), 5)

    clock = asyncio.get_running_loop().time
    began = clock()
    await asyncio.wait_for(runtime.stop(), 5)
    took = clock() - began
    assert 0.6 <= took < 1.1, took  # one grace, not one per loop
    assert [p.cancelled for p in providers] == [[0], [0]]


class _Step:
    def __init__(self, name: str, log: list[str], *, wait: float = 0.0, fail: bool = False) -> None:
        self.name, self.log, self.wait, self.fail = name, log, wait, fail

    async def stop(self) -> None:
        await asyncio.sleep(self.wait)
        if self.fail:
            raise RuntimeError(f"{self.name} failed")
        self.log.append(self.name)

    close = stop

    def stopping(self) -> None:
        return None


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
