"""The operations in the committed OpenAPI documents, and which are public by design.

Shared by the security suite (which calls every protected operation without a key) and the
contract suite (which checks every protected operation declares the key and its scopes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OPENAPI = Path(__file__).resolve().parents[1] / "schemas" / "openapi"

# Public by design, each for a stated reason; everything else must demand a key.
PUBLIC_PREFIXES = (
    "/healthz",  # probes
    "/readyz",
    "/metrics",  # scraped inside the cluster
    "/webhooks/",  # providers' callbacks: authenticated by their signatures instead
    "/2010-04-01/",  # the sandbox's fake Twilio: Twilio's own Basic auth (tests/security)
    "/sandbox",  # the sandbox's capture API and page: development only, never deployed
    # Customer pages and one-click unsubscribe: authenticated by their signed, expiring token.
    "/p/",
    "/s/",
    "/v1/unsubscribe/",
    "/docs",
    "/openapi.json",
)

# POSTs that change nothing and so need only a read scope, each for a stated reason.
READ_ONLY_POSTS = {
    ("scheduler", "/v1/campaigns/dry-run"),  # answers who would be contacted; sends nothing
    ("ingest", "/v1/cases/{case_id}/status-links"),  # signs a link to what cases:read shows
}

METHODS = ("get", "post", "put", "patch", "delete")


def documents() -> dict[str, dict[str, Any]]:
    """Every committed OpenAPI document by service."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(OPENAPI.glob("*.json"))}


def operations() -> list[tuple[str, str, str, bool]]:
    """(service, method, path, public) for every operation in the OpenAPI documents."""
    ops = []
    for service, doc in documents().items():
        for path, methods in doc["paths"].items():
            for method in methods:
                if method in METHODS:
                    public = path.startswith(PUBLIC_PREFIXES)
                    ops.append((service, method.upper(), path, public))
    return ops
