"""On the real broker, every member of a group with more members than partitions is ready.

With as many replicas as partitions, a rolling update's extra pod (maxSurge 1, maxUnavailable
0) joins a group with no partition left for one of its members; readiness that needed a
partition held that member unready, so the rollout could not finish (and paged). Modelled here
with the test namespace's 2 partitions and 3 members.
"""

from __future__ import annotations

import pytest

from herald_contracts import Topics
from herald_kit import ConcurrentConsumerLoop, ConsumerLoop, EventProducer, ServiceSettings
from support import eventually

TOPIC = Topics.TIMERS_REQUESTS
GROUP = "scheduler-timers"


async def _handled(record: object) -> None:
    return None


def _owned(loop: ConsumerLoop) -> int:
    """Partitions the member owns now."""
    assert loop._consumer is not None
    return len(loop._consumer.assignment())


@pytest.mark.parametrize("loop_type", [ConsumerLoop, ConcurrentConsumerLoop])
async def test_members_beyond_the_partition_count_are_ready(
    infra: dict[str, str], namespace: str, loop_type: type[ConsumerLoop]
) -> None:
    settings = ServiceSettings(kafka_bootstrap=infra["kafka"], topic_namespace=namespace)
    producer = EventProducer(settings, "scheduler")
    loops: list[ConsumerLoop] = []
    try:
        for _ in range(3):  # two replicas running, and the rollout's extra pod
            loop = loop_type(settings, producer, GROUP, [TOPIC], _handled)
            await loop.start()
            loops.append(loop)
        await eventually(lambda: all(loop.ready() for loop in loops), within=60)
        assert sorted(_owned(loop) for loop in loops) == [
            0,
            1,
            1,
        ]  # one member owns nothing, and is ready all the same
        # A stopped member is not ready; the others take its partition and stay ready.
        stopped = loops.pop(0)
        await stopped.stop()
        assert not stopped.ready()
        await eventually(
            lambda: all(loop.ready() for loop in loops) and sum(map(_owned, loops)) == 2,
            within=60,
        )
    finally:
        for loop in loops:
            loop.stopping()
        for loop in loops:
            await loop.stop()
