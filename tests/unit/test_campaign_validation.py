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


@pytest.mark.parametrize(
    "body,words",
    [
        ("{{ case.status | nosuchfilter }}", "nosuchfilter"),
        ("{% if case.status %}{{ case.status | nosuchfilter }}{% endif %}", "nosuchfilter"),
        ("{% if case.status is nosuchtest %}x{% endif %}", "nosuchtest"),
        ('{{ case["colour"] }}', "case.colour"),
        ("{{ campaign['secret'] }}", "campaign.secret"),
        ("{% for k in case %}{{ case[k] }}{% endfor %}", "computed key"),
        ("{{ links.admin }}", "links.admin"),
    ],
)
def test_templates_the_dispatcher_could_not_render_are_refused(body: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        CampaignIn.model_validate(_with(messages={"sms": {"en": {"body": body}}}))
    (error,) = info.value.errors()
    assert error["loc"] == ("messages",)
    assert "sms.en.body" in error["msg"] and words in error["msg"], error["msg"]


@pytest.mark.parametrize(
    "body",
    [
        '{{ case["status"] }}',
        "{{ case.updated_at | datetime('short') }} {{ case.updated_at | date }}",
        "{{ case.updated_at | time }} {{ 1234.5 | number }} {{ case.status | upper }}",
        "{{ links.status }} {{ links.preferences }}",
        "{% if case.status is defined %}{{ contact.locale }}{% endif %}",
    ],
)
def test_templates_using_what_the_dispatcher_provides_are_accepted(body: str) -> None:
    CampaignIn.model_validate(_with(messages={"sms": {"en": {"body": body}}}))


def test_the_validator_and_the_renderer_share_one_environment() -> None:
    from herald_dispatcher.domain.render import render
    from herald_kit.templates import message_environment

    # A filter added to the kit's environment is accepted at save and renders at send time.
    message_environment().filters["shout"] = lambda v: f"{v}!"
    try:
        body = "{{ case.status | shout }}"
        CampaignIn.model_validate(_with(messages={"sms": {"en": {"body": body}}}))
        assert render(body, {"case": {"status": "delayed"}}) == "delayed!"
    finally:
        del message_environment().filters["shout"]


def test_filter_evaluates_over_event_and_case() -> None:
    expr = 'case.status == "delayed" && event.type == "case.updated"'
    assert evaluate(expr, {"case": {"status": "delayed"}, "event": {"type": "case.updated"}})
    assert not evaluate(expr, {"case": {"status": "open"}, "event": {"type": "case.updated"}})


def test_request_ids_are_deterministic() -> None:
    assert request_id("c", "case:3", "u") == request_id("c", "case:3", "u")
    assert request_id("c", "case:3", "u") != request_id("c", "case:4", "u")


def test_the_documented_examples_are_valid() -> None:
    """The OpenAPI examples of the campaign API are what it accepts and answers."""
    from herald_scheduler.api.campaigns import Campaign, CampaignStats
    from herald_scheduler.domain.dryrun import DryRunResult

    for model in (CampaignIn, Campaign, CampaignStats, DryRunResult):
        examples = model.model_json_schema(mode="serialization").get("examples")
        assert examples, model.__name__
        for example in examples:
            model.model_validate(example)
