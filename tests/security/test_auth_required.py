"""Every non-public endpoint of every service refuses a missing key (401) and a key without
the scope it needs (403), answering problem+json. The endpoints come from the OpenAPI documents
in schemas/openapi/, so an endpoint added later is checked without touching this test."""

from __future__ import annotations

import re

import httpx
import pytest
from endpoints import READ_ONLY_POSTS, operations
from security.conftest import NO_SCOPE_KEY

from herald_devstack import Stack
from support import READ_ONLY_KEY


def concrete(path: str) -> str:
    """A path with every parameter filled in."""
    return re.sub(r"\{[^}]+\}", "x-1", path)


def is_problem(r: httpx.Response) -> bool:
    """An RFC 9457 problem document."""
    return r.headers.get("content-type", "").startswith("application/problem+json") and (
        "title" in r.json() and "status" in r.json()
    )


def test_the_endpoint_list_is_not_empty() -> None:
    """The checks below are only as good as the list they walk."""
    protected = [op for op in operations() if not op[3]]
    assert len(protected) >= 10, protected
    services = {op[0] for op in protected}
    assert {"preferences", "ingest", "scheduler", "dispatcher"} <= services


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_every_protected_endpoint_refuses_missing_and_unscoped_keys(
    keyed_stack: Stack,
) -> None:
    failures: list[str] = []
    checked = 0
    async with httpx.AsyncClient(timeout=20) as http:
        for service, method, path, public in operations():
            if public:
                continue
            url = keyed_stack.url(service) + concrete(path)
            # A valid JSON body, so that no parser answers before the key is checked.
            body = {} if method in ("POST", "PUT", "PATCH") else None
            for label, headers, expected in (
                ("no key", {}, 401),
                ("wrong key", {"Authorization": "Bearer not-a-key"}, 401),
                ("key without scopes", {"Authorization": f"Bearer {NO_SCOPE_KEY}"}, 403),
            ):
                r = await http.request(method, url, json=body, headers=headers)
                checked += 1
                if r.status_code != expected or not is_problem(r):
                    failures.append(f"{method} {service}{path} [{label}] -> {r.status_code}")
            if method != "GET" and (service, path) not in READ_ONLY_POSTS:
                # A read-only key must not write.
                r = await http.request(
                    method, url, json=body, headers={"Authorization": f"Bearer {READ_ONLY_KEY}"}
                )
                checked += 1
                if r.status_code != 403 or not is_problem(r):
                    failures.append(f"{method} {service}{path} [read-only key] -> {r.status_code}")
    assert checked > 30
    assert not failures, "\n".join(failures)


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_sandbox_messages_resource_demands_twilio_credentials(keyed_stack: Stack) -> None:
    url = f"{keyed_stack.url('sandbox')}/2010-04-01/Accounts/AC0/Messages.json"
    async with httpx.AsyncClient(timeout=20) as http:
        r = await http.post(url, data={"To": "+12015550100", "From": "+1", "Body": "x"})
        assert r.status_code == 401
        r = await http.post(
            url, data={"To": "+12015550100", "From": "+1", "Body": "x"}, auth=("AC0", "wrong")
        )
        assert r.status_code == 401
