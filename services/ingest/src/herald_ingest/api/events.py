"""Event intake over HTTP: one structured CloudEvent, or a batch as a JSON array."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from herald_ingest.config import Settings
from herald_ingest.domain.intake import (
    EventCatalog,
    InboundEvent,
    Rejected,
    StructuredCloudEvent,
    parse_structured,
)
from herald_ingest.processing import Outcome, Processor, is_outage
from herald_kit import (
    HeraldError,
    InvalidInput,
    MalformedRequest,
    PermanentError,
    Principal,
    problem,
    require_scopes,
)

log = logging.getLogger("herald.ingest")
router = APIRouter(prefix="/v1", tags=["events"])
Writer = Annotated[Principal, Depends(require_scopes("events:write"))]
JSON_TYPES = (
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
)


class EventResult(BaseModel):
    """What became of one event."""

    index: int
    id: str | None = None
    result: Literal["accepted", "duplicate", "rejected", "failed"]
    field: str | None = None
    reason: str | None = None


class BatchResult(BaseModel):
    """Per-event results of a batch."""

    accepted: int
    duplicate: int
    rejected: int
    failed: int = Field(
        default=0, description="Events that met an unexpected error (the others still count)."
    )
    results: list[EventResult]


class UnsupportedMediaType(HeraldError):
    """Only JSON bodies are accepted."""

    status = 415
    title = "Unsupported media type"


async def _json_body(request: Request) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"content-type must be one of {', '.join(JSON_TYPES)}", field="content-type"
        )
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedRequest("the body is not valid JSON", field="body") from exc


@router.post(
    "/events",
    status_code=202,
    summary="Post one CloudEvent or a batch (JSON array).",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                t: {"schema": StructuredCloudEvent.model_json_schema()} for t in JSON_TYPES
            },
        }
    },
    responses={
        202: {"model": BatchResult},
        400: {"description": "Malformed JSON (problem+json)"},
        413: {"description": "Body or batch too large"},
        415: {"description": "Not JSON"},
        422: {"description": "The single event is invalid; `field` names where"},
    },
)
async def post_events(request: Request, who: Writer) -> Any:
    """Validate, dedupe and apply events; a batch answers per event."""
    del who
    settings: Settings = request.app.state.settings
    processor: Processor = request.app.state.processor
    payload = await _json_body(request)
    single = not isinstance(payload, list)
    items = [payload] if single else payload
    if not single and len(items) > settings.max_batch:
        return problem(
            413,
            "Batch too large",
            f"a batch holds at most {settings.max_batch} events",
            field="body",
        )
    if not single and not items:
        raise InvalidInput("the batch is empty", field="body")
    catalog: EventCatalog = request.app.state.catalog
    results: dict[int, EventResult] = {}
    valid: list[tuple[int, InboundEvent]] = []
    for index, raw in enumerate(items):
        try:
            valid.append((index, parse_structured(raw, catalog)))
        except Rejected as exc:
            if single:
                raise InvalidInput(f"{exc.field}: {exc.reason}", field=exc.field) from exc
            results[index] = EventResult(
                index=index, id=_id_of(raw), result="rejected", field=exc.field, reason=exc.reason
            )
    outcomes = await processor.submit([event for _, event in valid])
    first = outcomes[0] if outcomes else None
    if single and isinstance(first, Exception):
        raise first  # its own problem+json: 422 naming the field, 503 for an outage
    for outcome in outcomes:
        if isinstance(outcome, Exception) and is_outage(outcome):
            # Retrying the whole batch is safe (events already applied answer `duplicate`),
            # and a caller that reads only the status must not take the batch as done.
            raise outcome
    for (index, event), outcome in zip(valid, outcomes, strict=True):
        results[index] = _result(index, event, outcome)
    ordered = [results[i] for i in range(len(items))]
    body = BatchResult(
        accepted=sum(r.result == "accepted" for r in ordered),
        duplicate=sum(r.result == "duplicate" for r in ordered),
        rejected=sum(r.result == "rejected" for r in ordered),
        failed=sum(r.result == "failed" for r in ordered),
        results=ordered,
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=202)


def _result(index: int, event: InboundEvent, outcome: Outcome | Exception) -> EventResult:
    """One event's line of a batch's answer."""
    if isinstance(outcome, Outcome):
        return EventResult(index=index, id=event.id, result=outcome.value)
    if isinstance(outcome, PermanentError):
        # Something only processing could find wrong with the event (its case would outgrow
        # what the broker takes, say): the event's own fault, named like a validation error.
        return EventResult(
            index=index,
            id=event.id,
            result="rejected",
            field=outcome.field,
            reason=outcome.detail,
        )
    log.error(
        "event of a batch failed",
        exc_info=outcome,
        extra={"index": index, "error": type(outcome).__name__},
    )
    return EventResult(index=index, id=event.id, result="failed", reason="internal error")


def _id_of(raw: Any) -> str | None:
    return str(raw.get("id")) if isinstance(raw, dict) and raw.get("id") is not None else None
