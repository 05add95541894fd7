"""Validate incoming CloudEvents (structured JSON) into business events."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from herald_contracts import INBOUND, CaseEventData


class InboundEvent(BaseModel):
    """A validated business event, whichever way it arrived."""

    model_config = ConfigDict(frozen=True)

    id: str
    source: str
    type: str
    time: datetime | None
    data: CaseEventData

    @property
    def key(self) -> str:
        """The dedupe key: (source, id)."""
        return f"{self.source}|{self.id}"


class StructuredCloudEvent(BaseModel):
    """CloudEvents 1.0 structured JSON, as posted over HTTP."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "specversion": "1.0",
                    "id": "evt-1001",
                    "source": "/crm/cases",
                    "type": "case.updated",
                    "time": "2026-11-24T09:00:00Z",
                    "data": {
                        "case_id": "case-7",
                        "customer_ids": ["cust-42"],
                        "status": "engineer booked for 14:00",
                    },
                }
            ]
        },
    )

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=500)
    type: str = Field(min_length=1, max_length=200)
    time: AwareDatetime | None = None
    subject: str | None = None
    datacontenttype: str | None = None
    data: dict[str, Any]


class Rejected(Exception):
    """One event of a batch is invalid; field names where."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _first_error(exc: ValidationError, prefix: str = "") -> Rejected:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return Rejected(f"{prefix}{loc}" if loc else prefix.rstrip(".") or "body", err["msg"])


def parse_structured(raw: Any) -> InboundEvent:
    """Validate one structured CloudEvent; Rejected naming the field otherwise."""
    if not isinstance(raw, dict):
        raise Rejected("body", "a CloudEvent must be a JSON object")
    try:
        ce = StructuredCloudEvent.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc) from exc
    return validate_event(ce.id, ce.source, ce.type, ce.time, ce.data)


def validate_event(
    event_id: str, source: str, type_: str, time: datetime | None, data: Any
) -> InboundEvent:
    """Check the type is known and the data matches its schema."""
    if type_ not in INBOUND:
        raise Rejected("type", f"unknown event type {type_!r}")
    model = INBOUND[type_].model
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, "data.") from exc
    assert isinstance(body, CaseEventData)
    return InboundEvent(id=event_id, source=source, type=type_, time=time, data=body)
