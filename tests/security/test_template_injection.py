"""Server-side template injection: hostile campaign templates and hostile case data render inert.

Campaign authors write Jinja2; the scheduler validates the template when the campaign is saved
and the dispatcher renders it for every customer. Both are exercised here with the payloads
attackers use to reach Python internals, the process environment or the file system.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from herald_dispatcher.domain.render import RenderError, render
from herald_scheduler.domain.campaigns import CampaignIn

PAYLOADS: list[object] = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c.__name__ }}{% endfor %}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__.os.environ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__.__builtins__ }}",
    "{{ config.items() }}",
    "{{ request.application.__globals__ }}",
    "{{ case.__class__.__init__.__globals__ }}",
    "{{ case.status.__class__.__mro__ }}",
    "{{ case.items.__self__.__class__ }}",
    "{{ ''|attr('__class__')|attr('__mro__') }}",
    "{{ 'a'.format.__globals__ }}",
    "{% set x = ''.__class__ %}{{ x }}",
]

# Loader tags are refused when the campaign is saved; size bombs are refused at render time
# (the decision records 'failed (render)').
PAYLOADS += [
    "{% import 'os' as os %}{{ os }}",
    "{% include '/etc/passwd' %}",
    "{% extends '/etc/passwd' %}",
    "{{ range(10**9)|list }}",
    "{{ 'x' * 10**8 }}",
    "{{ 'x' * 10**9 }}",
    "{{ 9 ** 9 ** 9 }}",
]

# What leaking internals look like in rendered text.
LEAK_MARKERS = (
    "<class",
    "subclasses",
    "__",
    "uid=",
    "root:",
    "<function",
    "<built-in",
    "<module",
    "environ",
    "PATH",
)

VARIABLES = {
    "case": {"case_id": "case-7", "status": "engineer booked", "customer_ids": ["c-1"]},
    "contact": {"customer_id": "c-1", "locale": "en-GB"},
    "campaign": {"id": "cmp-1", "name": "Updates"},
}


def _campaign(body: str) -> dict[str, object]:
    return {
        "name": "hostile",
        "topic": "service-updates",
        "trigger": {"kind": "event", "event_types": ["case.updated"]},
        "messages": {"sms": {"en": {"body": body}}},
    }


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.timeout(20)
def test_hostile_template_is_rejected_or_renders_inert(payload: str) -> None:
    try:
        CampaignIn.model_validate(_campaign(payload))
    except ValidationError as exc:
        # Rejected when the campaign is saved, naming the template that does not compile.
        assert "messages" in str(exc)
        return
    try:
        out = render(payload, VARIABLES)
    except RenderError:
        return  # the decision records 'failed (render)'; nothing reaches the customer
    assert len(out) < 100_000
    for marker in LEAK_MARKERS:
        assert marker not in out, f"{payload!r} leaked {marker!r}: {out[:200]!r}"


@pytest.mark.parametrize("hostile", ["{{ 7*7 }}", "{% raw %}x{% endraw %}", "{{ config }}"])
def test_case_data_is_never_evaluated_as_a_template(hostile: str) -> None:
    """A backend's status text is data: it appears literally, however template-like."""
    variables = {**VARIABLES, "case": {**VARIABLES["case"], "status": hostile}}
    assert (
        render("Case {{ case.case_id }}: {{ case.status }}", variables) == f"Case case-7: {hostile}"
    )
