"""The sandbox's own JSON API: what went out, for tests and the page."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

router = APIRouter(prefix="/sandbox/api", tags=["sandbox"])


@router.get("/sms", summary="SMS the sandbox accepted, optionally for one number.")
async def list_sms(
    request: Request,
    to: str | None = None,
    after: Annotated[
        int, Query(ge=0, description="Skip the first `after` SMS accepted (pass the last `next`).")
    ] = 0,
) -> dict[str, Any]:
    """Captured SMS, oldest first; `next` is where a poll for newer ones starts."""
    outbox = request.app.state.outbox
    total = len(outbox.sms)
    items = [m.as_json() for m in outbox.sms[after:total] if to is None or m.to == to]
    return {"items": items, "count": len(items), "next": total}
