"""API keys with scopes; only their SHA-256 hashes are configured or stored."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from herald_kit._errors import HeraldError
from herald_kit._settings import ApiKeyEntry


class Unauthenticated(HeraldError):
    """No key, or a key we do not know."""

    status = 401
    title = "Unauthenticated"


class Forbidden(HeraldError):
    """A known key without the scope the endpoint needs."""

    status = 403
    title = "Forbidden"


def hash_key(key: str) -> str:
    """The stored form of a key. Keys are 256-bit random, so a plain SHA-256 is enough."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key."""
    return "hk_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: the key's name and scopes."""

    name: str
    scopes: frozenset[str]


class KeyStore:
    """Looks keys up by hash, in constant time per entry."""

    def __init__(self, entries: Iterable[ApiKeyEntry]) -> None:
        self._entries = list(entries)

    def authenticate(self, key: str) -> Principal | None:
        """The principal a presented key belongs to, or None."""
        digest = hash_key(key)
        found: Principal | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.hash, digest):
                found = Principal(entry.name, frozenset(entry.scopes))
        return found


# The two ways to present a key, as OpenAPI security schemes: either one will do. They only
# document the key (auto_error=False); the dependency below reads and checks it. Each operation
# names the scopes it needs in its security requirement (OpenAPI 3.1 allows role names there
# for schemes other than OAuth2).
_ROLES = "The operation's security requirement lists the scopes the key must hold."
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="hk_…",
    description=f"A Herald API key: `Authorization: Bearer <key>`. {_ROLES}",
)
HEADER = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKeyHeader",
    description=f"The same Herald API key in the `X-API-Key` header. {_ROLES}",
)


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def require_scopes(*scopes: str) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the caller must hold every named scope.

    Every operation that uses it declares the API-key security schemes with these scopes in
    the service's OpenAPI document.
    """

    # Defaults, not Annotated: the scopes are this call's, which a string annotation (postponed
    # evaluation) could not see.
    bearer = Security(BEARER, scopes=list(scopes))
    header = Security(HEADER, scopes=list(scopes))

    async def dependency(
        request: Request,
        _bearer: HTTPAuthorizationCredentials | None = bearer,
        _header: str | None = header,
    ) -> Principal:
        store: KeyStore = request.app.state.keystore
        key = _presented_key(request)
        if key is None:
            raise Unauthenticated("An API key is required (Authorization: Bearer <key>).")
        principal = store.authenticate(key)
        if principal is None:
            raise Unauthenticated("The API key is not valid.")
        missing = [s for s in scopes if s not in principal.scopes]
        if missing:
            raise Forbidden(f"The API key lacks the scope(s): {', '.join(missing)}.")
        return principal

    return dependency


def main() -> None:
    """CLI: herald-apikey NAME SCOPE... prints a new key and the entry to configure."""
    parser = argparse.ArgumentParser(description="Create an API key.")
    parser.add_argument("name")
    parser.add_argument("scopes", nargs="+")
    args = parser.parse_args()
    key = new_key()
    entry = {"name": args.name, "hash": hash_key(key), "scopes": args.scopes}
    print(json.dumps({"key": key, "entry": entry}, indent=2))
