"""The kit's pacer and breaker export what the Providers dashboard shows, under the sender."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from herald_kit import CircuitBreaker, Pacer, PartitionShare, observe_provider_request


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_named_pacer_exports_rate_tokens_waits_and_holds() -> None:
    clock = Clock()
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    pacer = Pacer(10, burst=3, clock=clock, sleep=sleep, name="unit-pacer")
    assert sample("herald_pacer_rate_per_second", sender="unit-pacer") == 10
    assert sample("herald_pacer_tokens", sender="unit-pacer") == 3

    async def four() -> None:
        for _ in range(4):
            await pacer.acquire("a")

    asyncio.run(four())
    assert slept == pytest.approx([0.1])  # three from the burst, the fourth waits one interval
    assert sample("herald_pacer_wait_seconds_count", sender="unit-pacer") == 4
    assert sample("herald_pacer_wait_seconds_sum", sender="unit-pacer") == pytest.approx(0.1)
    assert sample("herald_pacer_tokens", sender="unit-pacer") == 0
    clock.t += 10
    assert sample("herald_pacer_tokens", sender="unit-pacer") == 3
    pacer.hold("a", 5)
    assert sample("herald_pacer_holds_total", sender="unit-pacer") == 1
    assert sample("herald_pacer_tokens", sender="unit-pacer") == 0


def test_a_named_pacer_exports_the_rate_of_its_share_so_replicas_sum_to_the_whole() -> None:
    pacer = Pacer(10, name="unit-share-pacer")
    pacer.follow(PartitionShare("sender", 3, 12))
    assert sample("herald_pacer_rate_per_second", sender="unit-share-pacer") == 2.5


def test_an_unnamed_pacer_exports_nothing() -> None:
    Pacer(10, name=None).hold("a", 1)
    assert sample("herald_pacer_holds_total", sender="") is None


def test_a_named_breaker_exports_its_state_and_openings() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=clock, name="unit-breaker")
    assert sample("herald_circuit_breaker_state", sender="unit-breaker") == 0
    breaker.failure()
    breaker.failure()
    assert sample("herald_circuit_breaker_state", sender="unit-breaker") == 2
    assert sample("herald_circuit_breaker_opened_total", sender="unit-breaker") == 1
    clock.t += 10
    assert sample("herald_circuit_breaker_state", sender="unit-breaker") == 1
    assert breaker.wait() == 0  # the trial
    breaker.failure()  # the trial failed: open again
    assert sample("herald_circuit_breaker_opened_total", sender="unit-breaker") == 2
    breaker.success()
    assert sample("herald_circuit_breaker_state", sender="unit-breaker") == 0


def test_provider_requests_are_counted_and_timed_by_outcome_and_code() -> None:
    observe_provider_request(sender="unit-twilio", outcome="busy", code="20429", seconds=0.2)
    labels = {"sender": "unit-twilio", "outcome": "busy"}
    assert sample("herald_provider_requests_total", **labels, code="20429") == 1
    assert sample("herald_provider_request_seconds_count", **labels) == 1


def test_remembered_label_children_count_into_the_exported_series() -> None:
    from prometheus_client import generate_latest

    from herald_kit import labelled
    from herald_kit._metrics import CONSUMED

    child = labelled(CONSUMED, "probe-group", "probe.v1", "ok")
    assert child is labelled(CONSUMED, "probe-group", "probe.v1", "ok")
    before = CONSUMED.labels("probe-group", "probe.v1", "ok")._value.get()
    child.inc()
    child.inc()
    assert CONSUMED.labels("probe-group", "probe.v1", "ok")._value.get() == before + 2
    assert b'group="probe-group"' in generate_latest()
