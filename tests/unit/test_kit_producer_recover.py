"""A producer the broker refuses for good is replaced only by one that started: a replacement
that could not start (the broker still restarting) must not take over, or every later send
would wait on a closed producer."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber

from herald_kit import EventProducer, ServiceSettings, _kafka


class _Producer:
    """Stands in for aiokafka's producer: the second one made cannot start."""

    made: list[_Producer] = []

    def __init__(self, **options: Any) -> None:
        self.started = False
        self.stopped = False
        _Producer.made.append(self)

    async def start(self) -> None:
        if _Producer.made.index(self) == 1:
            raise KafkaConnectionError("broker still restarting")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


async def test_a_replacement_that_did_not_start_never_takes_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_kafka, "AIOKafkaProducer", _Producer)
    _Producer.made = []
    producer = EventProducer(ServiceSettings(kafka_bootstrap="127.0.0.1:1"), "test")
    refused = _Producer()
    refused.started = True
    producer._producer = refused  # type: ignore[assignment]

    # The broker is still restarting: the refused producer stays (its sends fail at once).
    assert not await producer.recover(OutOfOrderSequenceNumber())
    assert producer.raw is refused
    assert _Producer.made[1].stopped  # the replacement that did not start left nothing open

    # The next refused send tries again, and a replacement that started takes over.
    assert await producer.recover(OutOfOrderSequenceNumber())
    assert producer.raw is _Producer.made[2]
    assert producer.raw.started  # type: ignore[attr-defined]
    assert refused.stopped
