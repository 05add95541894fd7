"""Schemathesis against every service's OpenAPI document (schemas/openapi/*.json), valid and
invalid inputs alike: no answer is a 5xx, and every 4xx is problem+json (RFC 9457)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from herald_devstack import Stack
from support import TEST_KEY

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = ROOT / "schemas" / "openapi"
# Per operation and mode: CI-sized; HERALD_FUZZ_EXAMPLES=200 digs deeper locally.
EXAMPLES = int(os.environ.get("HERALD_FUZZ_EXAMPLES", "15"))
# The sandbox's fake Twilio answers in Twilio's error format, as Twilio does.
NOT_PROBLEM_JSON = ("/2010-04-01/",)
SKIP = ("/metrics",)  # Prometheus text, no input


def _operations() -> list[tuple[str, Any]]:
    out = []
    for doc in sorted(OPENAPI.glob("*.json")):
        schema = schemathesis.openapi.from_path(str(doc))
        for result in schema.get_all_operations():
            op = result.ok()
            if not op.path.startswith(SKIP):
                out.append((doc.stem, op))
    return out


def _prober(
    service: str, base: str, op: Any, mode: GenerationMode, failures: list[str], calls: list[int]
) -> Any:
    """A hypothesis test that fuzzes one operation of one running service."""
    html_page = any(
        "text/html" in (r.get("content") or {})
        for r in op.definition.raw.get("responses", {}).values()
    )

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def probe(case: Any) -> None:
        headers = dict(case.headers or {})
        headers.setdefault("Authorization", f"Bearer {TEST_KEY}")
        resp = case.call(base_url=base, headers=headers, timeout=30)
        calls.append(resp.status_code)
        where = f"{case.method} {service}{case.formatted_path}"
        if resp.status_code >= 500:
            sent = f"headers sent: {case.headers!r}; body sent: {case.body!r}"
            failures.append(f"{where} -> {resp.status_code}; {sent}"[:800])
        elif resp.status_code >= 400 and not case.path.startswith(NOT_PROBLEM_JSON):
            ctype = str(resp.headers.get("content-type", ""))
            # Pages customers open in a browser answer errors as HTML pages; APIs as problems.
            page_error = html_page and "text/html" in ctype
            if "application/problem+json" not in ctype and not page_error:
                failures.append(f"{where} -> {resp.status_code} as {ctype}")

    return probe


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_no_server_errors_and_problem_json_on_every_client_error(fuzz_stack: Stack) -> None:
    failures: list[str] = []
    calls: list[int] = []
    for service, op in _operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            probe = _prober(service, fuzz_stack.url(service), op, mode, failures, calls)
            try:
                probe()
            except Unsatisfiable:
                pass  # nothing invalid to make of this operation in this mode (e.g. no input)
            except Exception as exc:  # an example that could not be generated or sent
                failures.append(f"{op.method.upper()} {service}{op.path}: {exc!r}"[:300])
    assert len(calls) > 100, failures[:5]
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(sorted(set(failures))[:40])
