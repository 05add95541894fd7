"""A consumer is ready once it has joined its group, whether or not it owns a partition, and
reports no lag for partitions a rebalance took from it.

With as many replicas as partitions, a rolling update's extra pod (maxSurge 1) joins a group
with no partition left for one member: held unready for that, it stalled the rollout (and
paged, HeraldServiceDown counting every target not ready), and an HTTP service scaled past the
partition count kept its extra replicas out of traffic for good. The lag gauge is summed over
the members by the HPA: a member still reporting the lag of partitions another member now owns
counted it twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from herald_contracts import Topics
from herald_kit import ConsumerLoop, ServiceSettings
from herald_kit._metrics import LAG

TOPIC = Topics.TIMERS_REQUESTS
GROUP = "scheduler-timers"


class _Group:
    """Stands in for aiokafka's consumer: the topic's partitions, this member's assignment
    (set by the test, as a rebalance would) and the partitions' ends."""

    def __init__(self, partitions: int) -> None:
        self.partitions = set(range(partitions))
        self.assigned: set[TopicPartition] = set()
        self.ends: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions if topic == TOPIC.base else None

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends.get(tp)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def stop(self) -> None:
        return None


async def _handled(record: Any) -> None:
    return None


def _loop(group: _Group) -> ConsumerLoop:
    loop = ConsumerLoop(
        settings=ServiceSettings(),
        producer=None,  # type: ignore[arg-type]  # nothing is published: no record arrives
        group=GROUP,
        topics=[TOPIC],
        handler=_handled,
    )
    loop._consumer = group
    return loop


async def _rebalance(loop: ConsumerLoop, group: _Group, assigned: set[TopicPartition]) -> None:
    """What aiokafka does around a join: revoke everything, join, assign anew."""
    listener = loop._listener()
    await listener.on_partitions_revoked(group.assignment())
    group.assigned = set(assigned)
    await listener.on_partitions_assigned(set(assigned))


def _lag() -> float:
    return LAG.labels(GROUP, TOPIC.base)._value.get()  # type: ignore[no-any-return]


async def test_a_member_without_partitions_is_ready_once_it_has_joined() -> None:
    group = _Group(partitions=2)
    loop = _loop(group)
    loop._task = asyncio.create_task(loop._run())
    try:
        assert not loop.ready()  # started, not joined yet
        # Joined, with every partition owned by the replicas already running.
        await _rebalance(loop, group, set())
        assert loop.ready()
        # A rebalance under way: not a member until it completes.
        await loop._listener().on_partitions_revoked(set())
        assert not loop.ready()
        await _rebalance(loop, group, {TopicPartition(TOPIC.base, 1)})
        assert loop.ready()
        # A topic that does not exist (yet) leaves the member with nothing it could ever own.
        group.partitions = set()
        assert not loop.ready()
        group.partitions = {0, 1}
    finally:
        loop._task.cancel()
        await asyncio.gather(loop._task, return_exceptions=True)
    # The loop has ended: not ready, member or not.
    assert not loop.ready()


async def test_a_rebalance_resets_the_lag_of_the_partitions_a_member_lost() -> None:
    group = _Group(partitions=2)
    loop = _loop(group)
    tp0, tp1 = TopicPartition(TOPIC.base, 0), TopicPartition(TOPIC.base, 1)
    await _rebalance(loop, group, {tp0, tp1})
    group.ends = {tp0: 500, tp1: 300}
    loop._positions = {tp0: 100, tp1: 200}
    loop._update_lag(group)
    assert _lag() == 400 + 100

    # Partition 0 moves to a new member: only partition 1's lag is this member's now.
    await _rebalance(loop, group, {tp1})
    assert _lag() == 100
    # And none once the last one moves, though no record arrives here again to update it.
    await _rebalance(loop, group, set())
    assert _lag() == 0
    # Given back later, a partition's lag is not measured from where this member left it.
    group.ends = {tp0: 900, tp1: 300}
    await _rebalance(loop, group, {tp0})
    assert _lag() == 0
