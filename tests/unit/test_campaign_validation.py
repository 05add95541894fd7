"""A campaign is checked when it is saved: triggers, filters and templates."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from herald_scheduler.domain.campaigns import CampaignIn, request_id
from herald_scheduler.domain.expressions import evaluate

BASE: dict[str, Any] = {
    "name": "n",
    "topic": "service-updates",
    "trigger": {"kind": "event", "event_types": ["case.updated"]},
    "messages": {"sms": {"en": {"body": "{{ case.status }}"}}},
}


def _with(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


@pytest.mark.parametrize(
    "body,field",
    [
        (_with(trigger={"event_types": ["nope"]}), "trigger.event.event_types"),
        (
            _with(trigger={"event_types": ["case.updated"], "filter": "case.status =="}),
            "trigger.event.filter",
        ),
        (_with(messages={"sms": {"en": {"body": "{% if %}"}}}), "messages"),
        (_with(topic="Bad Topic"), "topic"),
        (_with(still_applies="(("), "still_applies"),
    ],
)
def test_invalid_campaigns_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        CampaignIn.model_validate(body)
    locs = [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]
    assert any(loc.startswith(field) for loc in locs), locs


def test_filter_evaluates_over_event_and_case() -> None:
    expr = 'case.status == "delayed" && event.type == "case.updated"'
    assert evaluate(expr, {"case": {"status": "delayed"}, "event": {"type": "case.updated"}})
    assert not evaluate(expr, {"case": {"status": "open"}, "event": {"type": "case.updated"}})


def test_request_ids_are_deterministic() -> None:
    assert request_id("c", "case:3", "u") == request_id("c", "case:3", "u")
    assert request_id("c", "case:3", "u") != request_id("c", "case:4", "u")
