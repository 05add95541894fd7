"""A customer's contact record: validated addresses, ranking, consent, locale, time zone."""

from __future__ import annotations

from typing import Annotated

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from herald_contracts import Channel, QuietHours
from herald_kit import valid_zone

Topic = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,63}$")]
# The id is a segment of /v1/contacts/{id}: with a '/' in it the contact could be created but
# never read, changed or erased (the router splits the path at the '/').
CustomerId = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00$./]+$")
]


def normalise_phone(value: str, region: str) -> str:
    """E.164 form of a phone number; ValueError when it is not a valid number."""
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError("not a phone number") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalise_email(value: str) -> str:
    """Normalised email address; ValueError when it is not valid."""
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc


class ChannelsIn(BaseModel):
    """Addresses per channel, as the caller gives them."""

    model_config = ConfigDict(extra="forbid")

    sms: str | None = Field(default=None, examples=["+447911123456"])
    email: str | None = Field(default=None, examples=["ada@example.com"])
    voice: str | None = Field(default=None, examples=["+447911123456"])


class ContactIn(BaseModel):
    """A contact as created or replaced through the API."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "cust-42",
                    "channels": {"sms": "+447911123456", "email": "ada@example.com"},
                    "ranking": ["sms", "email"],
                    "consents": {"service-updates": {"sms": True, "email": True}},
                    "locale": "en-GB",
                    "time_zone": "Europe/London",
                    "quiet_hours": {"start": "21:00", "end": "08:00"},
                }
            ]
        },
    )

    customer_id: CustomerId
    channels: ChannelsIn = Field(default_factory=ChannelsIn)
    ranking: list[Channel] = Field(default_factory=list, max_length=3)
    consents: dict[Topic, dict[Channel, bool]] = Field(default_factory=dict, max_length=50)
    locale: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = "en"
    time_zone: str = "UTC"
    quiet_hours: QuietHours | None = None

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        valid_zone(value)  # IANA names only: the same answer on every host, never an OSError
        return value

    @field_validator("ranking")
    @classmethod
    def _unique_ranking(cls, value: list[Channel]) -> list[Channel]:
        if len(set(value)) != len(value):
            raise ValueError("a channel appears twice in the ranking")
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours_not_empty(cls, value: QuietHours | None) -> QuietHours | None:
        if value is not None and value.start == value.end:
            raise ValueError("start and end must differ (an empty or whole-day window)")
        return value
