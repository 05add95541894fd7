"""Idempotency-Key on writes: the same key and body replay the first response; the same key
with a different body is refused (422).

A claim is settled once its request ends: released when the write failed (so the key may be
retried), completed with the response when it succeeded. A database that fails just then
would leave it pending, and every retry refused as in progress until the claim is stale
(`idempotency_stale_seconds`); so a settlement the database does not take is retried in the
background (`Settlements`) until it does, and a write that succeeded answers as it did.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from fastapi import Request, Response

from herald_contracts import utc_now
from herald_kit import (
    Conflict,
    InvalidInput,
    Principal,
    backoff,
    cancel_and_wait,
    is_transient_db_error,
)
from herald_preferences.adapters.repository import IdempotencyStore

log = logging.getLogger("herald.preferences.idempotency")

REPLAYED_HEADERS = ("etag", "location", "content-type")
# When a caller refused because the key's request is in progress may try again: a write takes
# well under a second, and a claim its request could not settle is settled in the background.
IN_PROGRESS_RETRY_AFTER_SECONDS = 1.0


class InProgress(Conflict):
    """A request with this Idempotency-Key is still running (409, with Retry-After)."""

    def __init__(self, detail: str, *, field: str) -> None:
        super().__init__(detail, field=field, code="Conflict")
        self.retry_after = IN_PROGRESS_RETRY_AFTER_SECONDS


class Settlements:
    """Claim settlements (release, completion) the database did not take when the request
    ended, retried in the background until it does, and at once when the same key comes
    again to this replica (the database answered its claim, so it is back)."""

    def __init__(self, *, base_seconds: float = 0.2, cap_seconds: float = 2.0) -> None:
        self.base_seconds = base_seconds
        self.cap_seconds = cap_seconds
        self._pending: dict[str, Callable[[], Awaitable[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def later(self, key: str, what: str, settle: Callable[[], Awaitable[None]]) -> None:
        """Retry `settle`, which settles claim `key`, in the background until the database
        takes it. Settling twice is harmless: each settlement names its claim's token."""
        self._pending[key] = settle
        task = asyncio.create_task(self._retry(key, what, settle), name=f"idempotency-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle_now(self, key: str) -> bool:
        """Settle claim `key` now if this replica still holds its settlement; True if it did."""
        settle = self._pending.get(key)
        if settle is None:
            return False
        try:
            await settle()
        except Exception:
            return False  # still away: the background retry goes on
        self._settled(key, settle)
        return True

    def _settled(self, key: str, settle: Callable[[], Awaitable[None]]) -> None:
        if self._pending.get(key) is settle:
            del self._pending[key]

    async def _retry(self, key: str, what: str, settle: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        while self._pending.get(key) is settle:
            attempt += 1
            await asyncio.sleep(backoff(attempt, base=self.base_seconds, cap=self.cap_seconds))
            if self._pending.get(key) is not settle:
                return  # settled by a request with the same key meanwhile
            try:
                await settle()
            except Exception as exc:
                if not is_transient_db_error(exc):
                    # Not an outage: retrying would meet it again. The claim is taken over
                    # once stale, as a crashed request's is.
                    self._settled(key, settle)
                    log.error(
                        "Idempotency-Key %s failed; the claim waits to go stale",
                        what,
                        extra={"error": type(exc).__name__},
                    )
                    return
                continue
            self._settled(key, settle)
            log.info("Idempotency-Key %s settled after a retry", what, extra={"attempts": attempt})

    async def stop(self) -> None:
        """Cancel the retries still running (their claims are taken over once stale)."""
        while self._tasks:
            await cancel_and_wait(next(iter(self._tasks)))


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
    settlements: Settlements = request.app.state.settlements
    stale = timedelta(seconds=request.app.state.settings.idempotency_stale_seconds)
    body = _canonical(await request.body(), request.headers.get("content-type", ""))
    fingerprint = hashlib.sha256(
        request.method.encode() + b" " + request.url.path.encode() + b"\n" + body
    ).hexdigest()
    row_id = f"{who.name}:{key}"
    token = uuid.uuid4().hex
    existing = await store.claim(
        row_id, fingerprint, now=utc_now(), stale=stale, token=token, customer_id=customer_id
    )
    if (
        existing is not None
        and existing["fingerprint"] == fingerprint
        and existing.get("state") != "done"
        and await settlements.settle_now(row_id)
    ):
        # The key's last request on this replica ended while the database was away, and its
        # claim is settled now: this request goes on as if it had been then (runs, or replays).
        existing = await store.claim(
            row_id, fingerprint, now=utc_now(), stale=stale, token=token, customer_id=customer_id
        )
    if existing is not None:
        if existing["fingerprint"] != fingerprint:
            raise InvalidInput(
                "this Idempotency-Key was used with a different request", field="Idempotency-Key"
            )
        if existing.get("state") != "done":
            raise InProgress(
                "a request with this Idempotency-Key is in progress", field="Idempotency-Key"
            )
        headers = dict(existing.get("headers", {}))
        headers["Idempotent-Replayed"] = "true"
        return Response(existing["body"], status_code=existing["status"], headers=headers)
    try:
        response = await run()
    except BaseException:
        # A failed write applied nothing (each is one atomic update): the key may be retried.
        # Often the database failed the write, and fails the release too: it is retried.
        try:
            await store.release(row_id, token=token)
        except Exception as exc:
            log.warning("Idempotency-Key release deferred", extra={"error": type(exc).__name__})
            settlements.later(row_id, "release", lambda: store.release(row_id, token=token))
        raise
    headers = {k: v for k, v in response.headers.items() if k.lower() in REPLAYED_HEADERS}

    async def complete() -> None:
        await store.complete(
            row_id,
            token=token,
            status=response.status_code,
            body=bytes(response.body),
            headers=headers,
            customer_id=customer_id,
        )

    try:
        await complete()
    except Exception as exc:
        # The write is applied: its answer stands, or the caller would retry a write that is
        # done (a create then answers 409, a PATCH applies again). A retry meanwhile is told
        # the request is in progress, and replays this answer once it is stored.
        log.warning("Idempotency-Key completion deferred", extra={"error": type(exc).__name__})
        settlements.later(row_id, "completion", complete)
    return response
