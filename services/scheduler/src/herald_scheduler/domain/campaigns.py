"""A campaign as operations staff define it, validated at save time."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from herald_contracts import INBOUND_EVENT_TYPES, Channel, MessageTemplate, Priority
from herald_scheduler.domain.expressions import ExpressionError, check

Topic = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,63}$")]
Locale = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]
_TEMPLATES = SandboxedEnvironment(autoescape=False)

# A campaign id, case and customer give a request id that a replay reproduces exactly.
REQUEST_NAMESPACE = uuid.UUID("6f1c2b36-6a55-4a2f-9d0e-3a8c7f0b9e11")


def request_id(campaign_id: str, trigger_key: str, customer_id: str) -> str:
    """Deterministic contact request id from (campaign id, trigger key, customer id)."""
    return str(uuid.uuid5(REQUEST_NAMESPACE, f"{campaign_id}|{trigger_key}|{customer_id}"))


class EventTrigger(BaseModel):
    """Fire on case changes of these types that pass the filter."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["event"] = "event"
    event_types: list[str] = Field(min_length=1, examples=[["case.updated"]])
    filter: str | None = Field(
        default=None,
        max_length=2000,
        description="CEL over `event` and `case` (the resulting state).",
        examples=['case.status == "delayed"'],
    )

    @field_validator("event_types")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in INBOUND_EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s): {', '.join(unknown)}")
        return value

    @field_validator("filter")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check(value)
            except ExpressionError as exc:
                raise ValueError(str(exc)) from exc
        return value


class CampaignIn(BaseModel):
    """A campaign draft."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Engineer visit updates",
                    "topic": "service-updates",
                    "priority": "service",
                    "trigger": {"kind": "event", "event_types": ["case.updated"]},
                    "messages": {
                        "sms": {"en": {"body": "Your case {{ case.case_id }}: {{ case.status }}"}}
                    },
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    topic: Topic
    priority: Priority = Priority.SERVICE
    trigger: EventTrigger
    messages: dict[Channel, dict[Locale, MessageTemplate]] = Field(min_length=1)
    still_applies: str | None = Field(default=None, max_length=2000)
    max_attempts: int = Field(default=3, ge=1, le=10)

    @field_validator("messages")
    @classmethod
    def _templates_compile(
        cls, value: dict[Channel, dict[str, MessageTemplate]]
    ) -> dict[Channel, dict[str, MessageTemplate]]:
        for channel, by_locale in value.items():
            if not by_locale:
                raise ValueError(f"{channel}: at least one locale is needed")
            for locale, tpl in by_locale.items():
                for part in ("body", "subject", "html"):
                    text = getattr(tpl, part)
                    if text is None:
                        continue
                    try:
                        _TEMPLATES.parse(text)
                    except TemplateSyntaxError as exc:
                        raise ValueError(
                            f"{channel}.{locale}.{part}: template does not compile: {exc.message}"
                        ) from exc
        return value

    @field_validator("still_applies")
    @classmethod
    def _condition_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check(value)
            except ExpressionError as exc:
                raise ValueError(str(exc)) from exc
        return value


CampaignStatus = Literal["draft", "active", "paused", "archived"]
