"""Every protected operation in every committed OpenAPI document declares the API key and the
scopes it needs; public operations declare none. The scopes are what `require_scopes` checks,
so a client (or a reviewer) reads them from the spec instead of from the code."""

from __future__ import annotations

from typing import Any

import pytest
from endpoints import READ_ONLY_POSTS, documents, operations

SCHEMES = {"ApiKey", "ApiKeyHeader"}
OPS = operations()


def _operation(service: str, method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = documents()[service]["paths"][path][method.lower()]
    return op


def test_every_service_with_protected_operations_defines_the_key_schemes() -> None:
    protected = {service for service, _, _, public in OPS if not public}
    assert {"scheduler", "preferences", "ingest", "dispatcher"} <= protected
    for service in protected:
        schemes = documents()[service]["components"]["securitySchemes"]
        assert set(schemes) == SCHEMES, service
        assert schemes["ApiKey"]["type"] == "http" and schemes["ApiKey"]["scheme"] == "bearer"
        assert schemes["ApiKeyHeader"] == {
            **schemes["ApiKeyHeader"],
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
        }


@pytest.mark.parametrize(
    "service,method,path", [op[:3] for op in OPS if not op[3]], ids=lambda v: str(v)
)
def test_a_protected_operation_declares_the_key_and_its_scopes(
    service: str, method: str, path: str
) -> None:
    security = _operation(service, method, path).get("security")
    assert security, f"{method} {service}{path} declares no security"
    # Alternatives (bearer or header), each naming the same scopes.
    assert {name for req in security for name in req} == SCHEMES
    assert all(len(req) == 1 for req in security)
    scopes = {tuple(scopes) for req in security for scopes in req.values()}
    assert len(scopes) == 1, scopes
    (needed,) = scopes
    assert needed, f"{method} {service}{path} names no scope"
    # A read never needs a write scope; a change is never allowed by a read scope alone.
    if method == "GET" or (service, path) in READ_ONLY_POSTS:
        assert not any(s.endswith(":write") for s in needed), needed
    else:
        assert not any(s.endswith(":read") for s in needed), needed


@pytest.mark.parametrize("service,method,path", [op[:3] for op in OPS if op[3]], ids=str)
def test_a_public_operation_does_not_ask_for_the_key(service: str, method: str, path: str) -> None:
    assert "security" not in _operation(service, method, path)
