"""A template cannot exhaust memory: not when a campaign is saved or dry-run (compiling), and
not when the dispatcher renders it (padding, formatting and wrapping are bounded)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from herald_dispatcher.domain.render import RenderError, render
from herald_scheduler.domain.campaigns import CampaignIn

# Each would build a string of 300 million characters.
BOMBS = [
    "{{ 'a'|center(300000000) }}",
    "{{ 'a'|indent(300000000, true) }}",
    "{{ ('\\n' * 50000)|indent(50000) }}",
    "{{ 'a b'|wordwrap(300000000) }}",
    "{{ 'a b'|truncate(300000000) }}",
    "{{ '%300000000s' % 'a' }}",
    "{{ '%.300000000f' % 1 }}",
    "{{ '%*s' % (300000000, 'a') }}",
    "{{ '%300000000s'|format('a') }}",
    "{{ '{:>300000000}'.format('a') }}",
    "{{ '{:>{}}'.format('a', 300000000) }}",
]
MB = 1 << 20


def _peak(action: Callable[[], Any]) -> tuple[int, Exception | None]:
    """The most memory the action held at once, and what it raised."""
    error: Exception | None = None
    tracemalloc.start()
    try:
        action()
    except (ValidationError, RenderError) as exc:
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, error


def _campaign(body: str) -> dict[str, Any]:
    return {
        "name": "n",
        "topic": "service-updates",
        "trigger": {"kind": "event", "event_types": ["case.updated"]},
        "messages": {"sms": {"en": {"body": body}}},
    }


@pytest.mark.parametrize("body", BOMBS)
def test_saving_a_template_does_not_evaluate_it(body: str) -> None:
    # Jinja's optimiser would run the constant filter and '%' while compiling.
    peak, _ = _peak(lambda: CampaignIn.model_validate(_campaign(body)))
    assert peak < 20 * MB


@pytest.mark.parametrize("body", BOMBS)
def test_rendering_a_size_bomb_is_refused_before_it_is_built(body: str) -> None:
    # The first render compiles the template too (the dispatcher keeps it compiled).
    peak, error = _peak(lambda: render(body, {}))
    assert isinstance(error, RenderError) and peak < 20 * MB


def test_ordinary_padding_formatting_and_wrapping_still_render() -> None:
    variables = {"case": {"status": "delayed parcel"}}
    text = (
        "{{ 'hi %s'|format(case.status) }}|{{ 'x'|center(5) }}|{{ 'a b c'|wordwrap(3) }}|"
        "{{ case.status|truncate(5, leeway=0) }}|{{ '%05.1f' % 3.14159 }}|"
        "{{ '{:>4}'.format('ab') }}|{{ 'a\nb'|indent(2) }}"
    )
    assert render(text, variables) == "hi delayed parcel|  x  |a b\nc|de...|003.1|  ab|a\n  b"


def test_the_attr_filter_is_refused_when_saved() -> None:
    # case|attr('colour') would pass the check of the fields a template reads.
    with pytest.raises(ValidationError, match="attr"):
        CampaignIn.model_validate(_campaign("{{ case|attr('statuz') }}"))
