"""What a dispatcher's timer ends in when it fires after its request expired: a contact's own
request (at whatever attempt) ends in campaign stats as suppressed, an escalation quietly. And a
row a newer version stored, with fields this one does not know, fires as any other."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from herald_contracts import (
    CampaignRef,
    ContactRequest,
    DeliveryStatus,
    EngagementReply,
    MessageTemplate,
    utc_now,
)
from herald_scheduler.messaging.timers import TimerService, suppressed_id


class _Timers:
    """One due dispatcher timer, claimed and settled."""

    def __init__(self, request: ContactRequest) -> None:
        self.row: dict[str, Any] = {
            "_id": "t1",
            "kind": "timer",
            "key": "defer:r1:2",
            "request": request.model_dump(mode="json"),
        }
        self.settled: list[str] = []
        self.failures: list[str] = []

    async def due(self, *, now: datetime, limit: int) -> list[str]:
        return [] if self.settled else ["t1"]

    async def claim(self, timer_id: str, *, now: datetime, lease: Any) -> dict[str, Any]:
        return self.row

    async def settle(self, row: dict[str, Any], outcome: str, *, now: datetime) -> bool:
        self.settled.append(outcome)
        return True

    async def failed_attempt(self, row: dict[str, Any], *, error: str) -> int:
        self.failures.append(error)
        return len(self.failures)


class _Producer:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def publish(self, event_type: Any, data: Any, **_: Any) -> None:
        self.sent.append(data)


def _expired(**overrides: Any) -> ContactRequest:
    at = datetime(2026, 1, 12, 6, tzinfo=UTC)
    campaign = CampaignRef(
        id="c", version=1, name="n", topic="t", max_attempts=3,
        messages={"sms": {"en": MessageTemplate(body="hi")}},
    )  # fmt: skip
    fields: dict[str, Any] = {
        "request_id": "r1",
        "campaign": campaign,
        "customer_id": "c1",
        "trigger_key": "k",
        "requested_at": at,
        "expires_at": at,
    }
    return ContactRequest(**{**fields, **overrides})


async def _fire(
    request: ContactRequest, *, row: dict[str, Any] | None = None
) -> tuple[list[str], list[Any]]:
    timers, producer = _Timers(request), _Producer()
    timers.row.update(row or {})
    service = TimerService(
        cast(Any, timers), cast(Any, producer), cast(Any, None), poll_seconds=1, lease_seconds=1
    )
    await service.fire_due()
    return timers.settled, producer.sent


async def test_a_contacts_deferred_next_channel_that_expires_ends_as_suppressed() -> None:
    # Its first channel failed before sending; the next one was deferred as attempt 2.
    settled, sent = await _fire(_expired(attempt=2, tried_channels=["email"]))
    assert settled == ["expired"]
    (status,) = sent
    assert isinstance(status, DeliveryStatus)
    assert (status.status, status.reason) == ("suppressed", "expired")
    assert status.message_id == suppressed_id("r1")


async def test_an_escalation_that_expires_ends_quietly() -> None:
    settled, sent = await _fire(_expired(attempt=2, tried_channels=["sms"], escalation_of="m1"))
    assert settled == ["expired"] and sent == []


async def test_a_row_a_newer_version_stored_fires_with_its_unknown_fields_ignored() -> None:
    """During a rolling update a newer dispatcher's timer (its request with a field this version
    does not know, at the top and nested) is sent, not failed for good as the row's fault."""
    request = _expired(expires_at=utc_now() + timedelta(hours=1))
    stored = request.model_dump(mode="json")
    stored["new_optional_field"] = None
    stored["campaign"]["messages"]["sms"]["en"]["new_template_field"] = "x"
    settled, sent = await _fire(request, row={"request": stored})
    assert settled == ["fired"]
    assert sent == [request]


async def test_a_deferred_call_back_a_newer_version_stored_is_republished() -> None:
    reply = EngagementReply(
        reply_id="x", customer_id="c1", channel="sms", intent="callback", at=utc_now(),
        callback_until=utc_now() + timedelta(hours=1),
    )  # fmt: skip
    stored = reply.model_dump(mode="json") | {"new_optional_field": None}
    settled, sent = await _fire(_expired(), row={"reply": stored})
    assert settled == ["fired"]
    assert sent == [reply]
