"""The sandbox's own JSON API: what went out, for tests and the page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter(prefix="/sandbox/api", tags=["sandbox"])


@router.get("/sms", summary="SMS the sandbox accepted, optionally for one number.")
async def list_sms(request: Request, to: str | None = None) -> dict[str, Any]:
    """Captured SMS, oldest first."""
    items = [m.as_json() for m in request.app.state.outbox.find_sms(to)]
    return {"items": items, "count": len(items)}
