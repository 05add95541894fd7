"""Validate incoming CloudEvents (structured JSON) into business events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from jsonschema import Draft202012Validator, FormatChecker  # type: ignore[import-untyped]
from jsonschema.exceptions import best_match  # type: ignore[import-untyped]
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from herald_contracts import INBOUND, CaseEventData, utc_representable

# How far ahead of ingest's clock an event's own time may be. Senders' clocks drift a little;
# an event stamped further ahead (a typo of 2062 for 2026) would outrank every correct update of
# its case until that time came, since the projection orders a case's events by their time.
MAX_TIME_AHEAD = timedelta(minutes=5)


class InboundEvent(BaseModel):
    """A validated business event, whichever way it arrived."""

    model_config = ConfigDict(frozen=True)

    id: str
    source: str
    type: str
    time: datetime | None
    data: CaseEventData
    # The W3C traceparent the event came in with (a Kafka record's header, the HTTP request's
    # trace): its cases.changed and cases.state records are published in that trace.
    traceparent: str | None = None

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
    time: AwareDatetime | None = Field(
        default=None,
        description="When the event happened, with an offset. It orders the case's events, so "
        "it may be at most a few minutes (HERALD_INGEST_MAX_EVENT_TIME_AHEAD_SECONDS, default "
        "300) ahead of ingest's clock; an event without one ranks by when ingest received it.",
    )
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
    # A refused attribute name is reported at ("attributes", name, "[key]"): the field is the
    # attribute itself, as the sender wrote it.
    loc = ".".join(str(p) for p in err["loc"] if p != "[key]")
    return Rejected(f"{prefix}{loc}" if loc else prefix.rstrip(".") or "body", err["msg"])


def parse_structured(
    raw: Any, catalog: EventCatalog | None = None, *, received: datetime | None = None
) -> InboundEvent:
    """Validate one structured CloudEvent received at `received` (now by default); Rejected
    naming the field otherwise."""
    if not isinstance(raw, dict):
        raise Rejected("body", "a CloudEvent must be a JSON object")
    try:
        ce = StructuredCloudEvent.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc) from exc
    return validate_event(
        ce.id, ce.source, ce.type, ce.time, ce.data, catalog or DEFAULT_CATALOG, received=received
    )


class CustomType:
    """A business event type of the deployment's own, validated by its JSON Schema.

    Its data must carry `case_id`; fields the case projection knows (status, summary, ...) are
    taken as such, and any other top-level scalar becomes a custom attribute of the case.
    """

    def __init__(self, name: str, schema: dict[str, Any]) -> None:
        Draft202012Validator.check_schema(schema)
        self.name = name
        self.validator = Draft202012Validator(schema, format_checker=FormatChecker())

    def to_case_data(self, data: Any) -> CaseEventData:
        """Validate data against the schema, then map it onto the case event body."""
        error = best_match(self.validator.iter_errors(data))
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path)
            raise Rejected(f"data.{where}" if where else "data", error.message)
        assert isinstance(data, dict)
        known = set(CaseEventData.model_fields)
        body = {k: v for k, v in data.items() if k in known}
        given = body.get("attributes")
        if given is not None and not isinstance(given, dict):
            raise Rejected("data.attributes", "must be an object")
        attributes = dict(given or {})
        lifted: set[str] = set()
        for k, v in data.items():
            if k not in known and (v is None or isinstance(v, str | int | float | bool)):
                attributes[k] = v
                lifted.add(k)
        body["attributes"] = attributes
        try:
            return CaseEventData.model_validate(body)
        except ValidationError as exc:
            loc = exc.errors()[0]["loc"]
            if len(loc) >= 2 and loc[0] == "attributes" and loc[1] in lifted:
                # A top-level field of the sender's became an attribute: name it as sent.
                raise Rejected(f"data.{loc[1]}", exc.errors()[0]["msg"]) from exc
            raise _first_error(exc, "data.") from exc


class EventCatalog:
    """The events ingest accepts: Herald's own types (schemas/events/) and custom ones, with a
    time at most `max_time_ahead` ahead of ingest's clock."""

    def __init__(
        self,
        custom: dict[str, dict[str, Any]] | None = None,
        *,
        max_time_ahead: timedelta = MAX_TIME_AHEAD,
    ) -> None:
        self.max_time_ahead = max_time_ahead
        self.custom: dict[str, CustomType] = {}
        for name, schema in (custom or {}).items():
            if name in INBOUND:
                raise ValueError(f"custom event type {name!r} would shadow a built-in type")
            self.custom[name] = CustomType(name, schema)

    def types(self) -> list[str]:
        """Every accepted type name."""
        return [*INBOUND, *self.custom]

    def validate(self, type_: str, data: Any) -> CaseEventData:
        """The event's body, checked against its type's schema; Rejected naming the field."""
        if type_ in self.custom:
            return self.custom[type_].to_case_data(data)
        if type_ not in INBOUND:
            raise Rejected("type", f"unknown event type {type_!r}")
        model = INBOUND[type_].model
        if isinstance(data, dict):
            # Name the missing field rather than the whole body (a model validator can't).
            for name in getattr(model, "requires", ()):
                if data.get(name) is None:
                    raise Rejected(f"data.{name}", f"required for {type_}")
        try:
            body = model.model_validate(data)
        except ValidationError as exc:
            raise _first_error(exc, "data.") from exc
        assert isinstance(body, CaseEventData)
        return body


DEFAULT_CATALOG = EventCatalog()


def validate_event(
    event_id: str,
    source: str,
    type_: str,
    time: datetime | None,
    data: Any,
    catalog: EventCatalog = DEFAULT_CATALOG,
    *,
    received: datetime | None = None,
    traceparent: str | None = None,
) -> InboundEvent:
    """Check the type is known, the time usable (not ahead of `received`, now by default, by
    more than the catalog allows) and the data matches its schema."""
    if time is not None:
        try:
            utc_representable(time)
        except ValueError as exc:
            raise Rejected("time", str(exc)) from exc
        received = received or datetime.now(UTC)
        if time > received + catalog.max_time_ahead:
            raise Rejected(
                "time",
                f"{time.isoformat()} is ahead of the time it was received "
                f"({received.isoformat(timespec='seconds')}) by more than "
                f"{int(catalog.max_time_ahead.total_seconds())} s",
            )
    body = catalog.validate(type_, data)
    return InboundEvent(
        id=event_id, source=source, type=type_, time=time, data=body, traceparent=traceparent
    )
