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
    "{{ 'a'.ljust(300000000) }}",
    "{{ 'a'.zfill(300000000) }}",
    "{{ ('\t' * 1000).expandtabs(300000) }}",
    "{{ ('x' * 100000).translate({120: 'y' * 3000}) }}",
    # Growth that compounds: each step is small, the fourth is 300 million characters.
    "{% set s = 'x' * 10 %}{% set s = s.replace('x', s) %}{% set s = s.replace('x', s) %}"
    "{% set s = s.replace('x', s[:300]) %}{% set s = s.replace('x', s[:100]) %}{{ s|length }}",
    "{% set s = 'x' * 10 %}{% set s = s|replace('x', s) %}{% set s = s|replace('x', s) %}"
    "{% set s = s|replace('x', s[:300]) %}{% set s = s|replace('x', s[:100]) %}{{ s|length }}",
    "{% set ns = namespace(s='x' * 1000) %}{% for i in range(20) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s|length }}",
    "{% set ns = namespace(s='x' * 1000) %}{% for i in range(20) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}{{ ns.s|length }}",
    # Joining or printing many references to one large value.
    "{% set s = 'x' * 90000 %}{{ ([s] * 3000)|join }}",
    "{% set s = 'x' * 90000 %}{{ ''.join([s] * 3000) }}",
    "{{ range(100000)|join('x' * 3000) }}",
    "{% set a = range(100000)|list %}{% set b = [a] * 3000 %}{{ b }}",
    "{% set l = [] %}{% set s = 'x' * 90000 %}{% for i in range(3000) %}{{ l.append(s) }}"
    "{% endfor %}{{ l }}",
    "{% set a = range(100000)|list %}{{ ([a] * 3000)|sum(start=[])|length }}",
    "{% set s = 'x' * 90000 %}{% for i in range(3000) %}{{ s }}{% endfor %}",
    "{% macro m() %}{% for i in range(3000) %}{{ 'x' * 90000 }}{% endfor %}{% endmacro %}"
    "{{ m()|length }}",
    "{{ [1]|batch(300000000, 'x')|list }}",
    "{{ [1]|slice(300000000)|list|length }}",
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


# Each would keep the dispatcher's event loop busy for hours (ten billion steps, a trillion
# macro calls): a render takes at most MAX_STEPS loop iterations and calls.
SPINNERS = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(40) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
]


@pytest.mark.parametrize("body", SPINNERS)
@pytest.mark.timeout(20)
def test_a_template_that_would_loop_for_hours_is_refused(body: str) -> None:
    with pytest.raises(RenderError, match="too many steps"):
        render(body, {})


def test_lipsum_is_not_offered() -> None:
    # lipsum(10**8) writes a hundred million paragraphs; a message never wants lorem ipsum.
    with pytest.raises(ValidationError, match="lipsum"):
        CampaignIn.model_validate(_campaign("{{ lipsum(3) }}"))


def test_ordinary_loops_joins_and_replacements_still_render() -> None:
    variables = {"case": {"status": "delayed parcel", "customer_ids": ["c-1", "c-2"]}}
    text = (
        "{% for c in case.customer_ids %}{{ loop.index }}:{{ c }} {% endfor %}|"
        "{{ case.customer_ids|join(', ') }}|{{ case.status|replace('delayed', 'late') }}|"
        "{{ case.status.replace('parcel', 'order') }}|{{ 'x' ~ case.status }}|"
        "{{ [1, 2, 3]|sum }}|{{ 'ab'.ljust(4) }}.|{{ ', '.join(['a', 'b']) }}|"
        "{% macro greet(n) %}hi {{ n }}{% endmacro %}{{ greet('Ann') }}|"
        "{{ case.customer_ids|batch(1)|list|length }}"
    )
    assert render(text, variables) == (
        "1:c-1 2:c-2 |c-1, c-2|late parcel|delayed order|xdelayed parcel|6|ab  .|a, b|hi Ann|2"
    )
    # A template that only reads a few hundred values stays far inside the step budget.
    many = "{% for i in range(5000) %}{{ i % 10 }}{% endfor %}"
    assert len(render(many, {})) == 5000


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
