"""A timer row that cannot be fired is tried a bounded number of times, then settled `failed`
(logged without the request, counted for HeraldTimersFailing); an outage of the broker or the
database is not the row's failure and is retried for as long as it lasts."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from herald_contracts import CampaignRef, ContactRequest, MessageTemplate
from herald_scheduler.messaging.timers import MAX_FIRE_ATTEMPTS, TimerService

PHONE = "+31612345678"


class _Timers:
    """Due rows whose lease has always passed by the next poll (each poll claims them again)."""

    def __init__(self, *rows: dict[str, Any]) -> None:
        self.rows = {r["_id"]: {"state": "pending", "attempts": 0, **r} for r in rows}

    async def due(self, *, now: datetime, limit: int) -> list[str]:
        return [i for i, r in self.rows.items() if r["state"] == "pending"][:limit]

    async def claim(self, timer_id: str, *, now: datetime, lease: Any) -> dict[str, Any]:
        self.rows[timer_id]["claim"] = f"c{self.rows[timer_id]['attempts']}"
        return dict(self.rows[timer_id])

    async def failed_attempt(self, row: dict[str, Any], *, error: str) -> int | None:
        stored = self.rows[row["_id"]]
        if stored["state"] != "pending" or stored["claim"] != row["claim"]:
            return None
        stored["attempts"] += 1
        stored["error"] = error
        return int(stored["attempts"])

    async def settle(self, row: dict[str, Any], state: str, *, now: datetime) -> bool:
        self.rows[row["_id"]]["state"] = state
        return True


class _Producer:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[Any] = []

    async def publish(self, event_type: Any, data: Any, **_: Any) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append(data)


class _Stats:
    async def requested(self, campaign_id: str, request_ids: list[str]) -> None:
        return None


def _request(request_id: str) -> dict[str, Any]:
    at = datetime.now(UTC)
    campaign = CampaignRef(
        id="c", version=1, name="n", topic="t", max_attempts=3,
        messages={"sms": {"en": MessageTemplate(body="hi")}},
    )  # fmt: skip
    request = ContactRequest(
        request_id=request_id,
        campaign=campaign,
        customer_id="c1",
        trigger_key="k",
        requested_at=at,
        expires_at=at + timedelta(days=1),
    )
    return request.model_dump(mode="json")


def _service(timers: _Timers, producer: _Producer) -> TimerService:
    return TimerService(
        cast(Any, timers), cast(Any, producer), cast(Any, _Stats()), poll_seconds=1, lease_seconds=1
    )


def _failed(kind: str) -> float:
    labels = {"kind": kind, "outcome": "failed"}
    return REGISTRY.get_sample_value("herald_scheduler_timers_total", labels) or 0.0


async def test_a_row_that_cannot_be_fired_is_settled_failed_after_a_bounded_number_of_tries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A row this version cannot read (its request lacks the campaign), written beside a good one.
    poison = {"_id": "poison", "kind": "timer", "key": "esc:1", "request": {"to": PHONE}}
    good = {"_id": "good", "kind": "timer", "key": "esc:2", "request": _request("r2")}
    timers, producer = _Timers(poison, good), _Producer()
    service = _service(timers, producer)
    before = _failed("timer")

    with caplog.at_level(logging.WARNING, logger="herald.scheduler.timers"):
        # The first poll fires the good row although the poison row fails before it.
        assert await service.fire_due() == 1
        assert timers.rows["good"]["state"] == "fired" and len(producer.sent) == 1
        for _ in range(MAX_FIRE_ATTEMPTS - 2):
            assert await service.fire_due() == 0
        assert timers.rows["poison"]["state"] == "pending"  # tried again after each lease
        assert _failed("timer") == before
        # The last try settles it: no more retries, counted for the alert.
        assert await service.fire_due() == 1
    assert timers.rows["poison"]["state"] == "failed"
    assert timers.rows["poison"]["attempts"] == MAX_FIRE_ATTEMPTS
    assert timers.rows["poison"]["error"] == "ValidationError"
    assert _failed("timer") == before + 1
    assert await service.fire_due() == 0 and timers.rows["poison"]["attempts"] == MAX_FIRE_ATTEMPTS

    (gave_up,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert cast(Any, gave_up).timer_id == "poison" and cast(Any, gave_up).error == "ValidationError"
    # Never the request: the error's text quotes it.
    assert all(PHONE not in r.getMessage() and PHONE not in str(vars(r)) for r in caplog.records)


async def test_an_outage_is_retried_for_as_long_as_it_lasts_without_failing_the_row() -> None:
    row = {"_id": "t1", "kind": "timer", "key": "esc:1", "request": _request("r1")}
    timers, producer = _Timers(row), _Producer(KafkaConnectionError())
    service = _service(timers, producer)
    for _ in range(MAX_FIRE_ATTEMPTS * 3):
        with pytest.raises(KafkaConnectionError):
            await service.fire_due()  # the poll ends; the row is fired again after its lease
    assert timers.rows["t1"]["state"] == "pending" and timers.rows["t1"]["attempts"] == 0

    producer.error = None  # the broker is back
    assert await service.fire_due() == 1
    assert timers.rows["t1"]["state"] == "fired" and len(producer.sent) == 1
