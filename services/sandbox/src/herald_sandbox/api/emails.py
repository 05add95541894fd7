"""The SMTP sink's JSON API: captured mail, and rules that make the sink refuse some of it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from herald_sandbox.adapters.smtp_sink import Mailbox

router = APIRouter(prefix="/sandbox/api/emails", tags=["sandbox"])


class RuleIn(BaseModel):
    """Answer `code` for mail to `recipient` ('*' for every recipient)."""

    model_config = ConfigDict(extra="forbid")

    recipient: str = Field(default="*", min_length=1, max_length=320)
    code: int = Field(ge=400, le=599, description="4xx: try again later; 5xx: permanent.")
    message: str = Field(default="", max_length=200, pattern=r"^[^\r\n]*$")
    stage: Literal["rcpt", "data"] = "rcpt"
    share: float = Field(default=1.0, gt=0, le=1, description="Fraction of matching mail.")
    times: int | None = Field(default=None, ge=1, description="Answer this many times, then 250.")


def _mailbox(request: Request) -> Mailbox:
    mailbox: Mailbox = request.app.state.mailbox
    return mailbox


@router.get("", summary="Mail the sink accepted, optionally for one address.")
async def list_emails(
    request: Request,
    to: Annotated[str | None, Query(max_length=320)] = None,
    raw: bool = False,
) -> dict[str, Any]:
    """Captured emails, oldest first."""
    items = [e.as_json(raw=raw) for e in _mailbox(request).find(to)]
    return {"items": items, "count": len(items)}


@router.post("/rules", status_code=201, summary="Make the sink refuse some mail.")
async def add_rule(request: Request, rule: RuleIn) -> dict[str, Any]:
    """Add a refusal rule; the first matching rule answers."""
    default = "4.7.0 Try again later" if rule.code < 500 else "5.1.1 Mailbox unavailable"
    data = rule.model_dump()
    data["message"] = rule.message or default
    return _mailbox(request).add_rule(**data).as_json()


@router.get("/rules", summary="The refusal rules and how often each answered.")
async def list_rules(request: Request) -> dict[str, Any]:
    """Rules in order."""
    mailbox = _mailbox(request)
    return {"items": [r.as_json() for r in mailbox.rules], "refused": mailbox.refused}


@router.delete("/rules", status_code=204, summary="Accept everything again.")
async def clear_rules(request: Request) -> None:
    """Remove every rule."""
    _mailbox(request).clear_rules()
