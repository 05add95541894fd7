"""Idempotency-Key on writes: the same key and body replay the first response; the same key
with a different body is refused (422)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta

from fastapi import Request, Response

from herald_contracts import utc_now
from herald_kit import Conflict, InvalidInput, Principal
from herald_preferences.adapters.repository import IdempotencyStore

REPLAYED_HEADERS = ("etag", "location", "content-type")


def _canonical(body: bytes, content_type: str) -> bytes:
    """What the fingerprint hashes: a JSON body in one canonical form (sorted keys, compact),
    so the same request formatted otherwise is a repeat, not a different request; any other
    body (NDJSON imports, where lines are rows) as sent."""
    if "ndjson" in content_type or "jsonl" in content_type:
        return body
    try:
        parsed = json.loads(body)
    except ValueError:  # not JSON, or not UTF-8
        return body
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def idempotent(
    request: Request,
    who: Principal,
    key: str | None,
    run: Callable[[], Awaitable[Response]],
    *,
    customer_id: str | None,
) -> Response:
    """Run a write once per (caller, key); replay its response for a repeat."""
    if key is None:
        return await run()
    if not 1 <= len(key) <= 200:
        raise InvalidInput("Idempotency-Key must be 1 to 200 characters", field="Idempotency-Key")
    store: IdempotencyStore = request.app.state.idempotency
    stale = timedelta(seconds=request.app.state.settings.idempotency_stale_seconds)
    body = _canonical(await request.body(), request.headers.get("content-type", ""))
    fingerprint = hashlib.sha256(
        request.method.encode() + b" " + request.url.path.encode() + b"\n" + body
    ).hexdigest()
    row_id = f"{who.name}:{key}"
    existing = await store.claim(
        row_id, fingerprint, now=utc_now(), stale=stale, customer_id=customer_id
    )
    if existing is not None:
        if existing["fingerprint"] != fingerprint:
            raise InvalidInput(
                "this Idempotency-Key was used with a different request", field="Idempotency-Key"
            )
        if existing.get("state") != "done":
            raise Conflict(
                "a request with this Idempotency-Key is in progress", field="Idempotency-Key"
            )
        headers = dict(existing.get("headers", {}))
        headers["Idempotent-Replayed"] = "true"
        return Response(existing["body"], status_code=existing["status"], headers=headers)
    try:
        response = await run()
    except BaseException:
        # A failed write applied nothing (each is one atomic update): the key may be retried.
        await store.release(row_id)
        raise
    headers = {k: v for k, v in response.headers.items() if k.lower() in REPLAYED_HEADERS}
    await store.complete(
        row_id,
        status=response.status_code,
        body=bytes(response.body),
        headers=headers,
        customer_id=customer_id,
    )
    return response
