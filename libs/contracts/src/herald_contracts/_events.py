"""Event bodies: one pydantic model per event type and version.

These models are the source of schemas/events/*.json (`make schemas`). A v1 model only ever
grows compatibly: new optional fields, never a removed or retyped one.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

Channel = Literal["sms", "email", "voice"]
CHANNELS: tuple[Channel, ...] = ("sms", "email", "voice")

Id = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00$]+$")]
# An id that backends send and the APIs take back as a path segment (/v1/cases/{id},
# /v1/customers/{id}/cases): a '/' in it would make what it names unreadable.
PathId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00$/]+$")]
Topic = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,63}$")]
Locale = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]

# The database stores integers as signed 64-bit: a larger one cannot be saved at all.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


def _storable(value: object) -> object:
    # Checked before the union is tried: float would otherwise take a too-large integer
    # silently (1e20 for 100000000000000000000), storing a number the sender never sent.
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"an integer must lie between {INT64_MIN} and {INT64_MAX}")
    # NaN and the infinities are not JSON (RFC 8259) though Python's parser reads them: they
    # would be published as null, and NaN differs from itself, changing the case at each event.
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN and Infinity are not JSON numbers")
    return value


Scalar = Annotated[str | Int64 | float | bool | None, BeforeValidator(_storable)]

# A case's custom attributes, as events may set them. Their names become field names in the
# database, which refuses a '.' in one, a leading '$' or NUL; and their number and size are
# bounded so that a case's state stays well within what one broker record can carry.
ATTRIBUTE_NAME_MAX = 100
ATTRIBUTE_TEXT_MAX = 1000
ATTRIBUTES_MAX = 100
ATTRIBUTE_NAME_PATTERN = r"^[^$.\x00][^.\x00]*$"


def _attribute_name(name: object) -> object:
    # Checked here rather than by a pattern constraint: the error says which rule, and pydantic
    # would turn a pattern on a key into `patternProperties` in the schema.
    if isinstance(name, str):
        if "." in name:
            raise ValueError("an attribute name may not contain '.'")
        if name.startswith("$"):
            raise ValueError("an attribute name may not start with '$'")
        if "\x00" in name:
            raise ValueError("an attribute name may not contain NUL")
    return name


def _attribute_value(value: object) -> object:
    # Before the union is tried, or a long string of digits could pass as a number.
    if isinstance(value, str) and len(value) > ATTRIBUTE_TEXT_MAX:
        raise ValueError(f"an attribute's text may hold at most {ATTRIBUTE_TEXT_MAX} characters")
    return _storable(value)


AttributeName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=ATTRIBUTE_NAME_MAX),
    BeforeValidator(_attribute_name),
]
AttributeValue = Annotated[
    Annotated[str, StringConstraints(max_length=ATTRIBUTE_TEXT_MAX)] | Int64 | float | bool | None,
    BeforeValidator(_attribute_value),
]


def _attribute_names_schema(schema: dict[str, Any]) -> None:
    schema.setdefault("propertyNames", {})["pattern"] = ATTRIBUTE_NAME_PATTERN


def utc_representable(value: datetime) -> datetime:
    """The time, if it converts to UTC; ValueError otherwise.

    0001-01-01T00:00:00+14:00 is valid ISO 8601, but its UTC value lies before year 1, which
    Python and the database cannot hold: comparing, storing or formatting it would fail later.
    """
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time must lie between years 1 and 9999 in UTC") from None
    return value


Time = Annotated[AwareDatetime, AfterValidator(utc_representable)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Appointment(_Body):
    """A booked visit or call."""

    starts_at: Time
    ends_at: Time | None = None
    engineer: str | None = Field(default=None, max_length=200)
    location: str | None = Field(default=None, max_length=500)


class CaseEventData(_Body):
    """Body of the business events backend systems publish about a case."""

    case_id: PathId
    customer_ids: list[PathId] = Field(default_factory=list, max_length=50)
    sequence: int | None = Field(
        default=None,
        ge=0,
        le=INT64_MAX,
        description="Source's own ordering; newer events have larger numbers.",
    )
    status: str | None = Field(default=None, max_length=100)
    summary: str | None = Field(default=None, max_length=2000)
    next_step: str | None = Field(default=None, max_length=2000)
    eta: Time | None = None
    assigned_team: str | None = Field(default=None, max_length=200)
    assigned_engineer: str | None = Field(default=None, max_length=200)
    appointment: Appointment | None = None
    attributes: dict[AttributeName, AttributeValue] = Field(
        default_factory=dict,
        max_length=ATTRIBUTES_MAX,
        description=(
            f"Custom fields of the case: at most {ATTRIBUTES_MAX}, each named by 1 to "
            f"{ATTRIBUTE_NAME_MAX} characters without '.', NUL or a leading '$', its text "
            f"at most {ATTRIBUTE_TEXT_MAX} characters."
        ),
        json_schema_extra=_attribute_names_schema,
    )


class _TypedCaseEvent(CaseEventData):
    # Fields this event type cannot do without. A model validator rather than a required
    # field, so the v1 schemas first published without the rule still only grow.
    requires: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _check_requires(self) -> Self:
        missing = [name for name in self.requires if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} required for this event type")
        return self


class CaseOpenedData(_TypedCaseEvent):
    """case.opened: a new case; its status defaults to "open"."""

    status: str | None = Field(default="open", max_length=100)


class CaseUpdatedData(_TypedCaseEvent):
    """case.updated: any change to a case's fields (status, summary, next step, ETA, team)."""


class CaseStatusChangedData(_TypedCaseEvent):
    """case.status_changed: the case moved to a new status; `status` is required."""

    requires: ClassVar[tuple[str, ...]] = ("status",)


class AppointmentBookedData(_TypedCaseEvent):
    """appointment.booked: a visit or call was booked; `appointment` is required."""

    requires: ClassVar[tuple[str, ...]] = ("appointment",)


class AppointmentRescheduledData(_TypedCaseEvent):
    """appointment.rescheduled: the booked visit moved; `appointment` is required."""

    requires: ClassVar[tuple[str, ...]] = ("appointment",)


class CaseResolvedData(_TypedCaseEvent):
    """case.resolved: the problem is fixed; status defaults to "resolved"."""

    status: str | None = Field(default="resolved", max_length=100)


class CaseClosedData(_TypedCaseEvent):
    """case.closed: the case is closed; status defaults to "closed"."""

    status: str | None = Field(default="closed", max_length=100)


# Each business event type and the model of its body (its JSON Schema is generated from it).
INBOUND_MODELS: dict[str, type[CaseEventData]] = {
    "case.opened": CaseOpenedData,
    "case.updated": CaseUpdatedData,
    "case.status_changed": CaseStatusChangedData,
    "appointment.booked": AppointmentBookedData,
    "appointment.rescheduled": AppointmentRescheduledData,
    "case.resolved": CaseResolvedData,
    "case.closed": CaseClosedData,
}

# The business event types ingest accepts.
INBOUND_EVENT_TYPES: tuple[str, ...] = (
    "case.opened",
    "case.updated",
    "case.status_changed",
    "appointment.booked",
    "appointment.rescheduled",
    "case.resolved",
    "case.closed",
)


class CaseState(_Body):
    """The latest, versioned state of a case as ingest projects it."""

    case_id: Id
    version: int = Field(ge=1)
    customer_ids: list[Id] = Field(default_factory=list)
    status: str | None = None
    summary: str | None = None
    next_step: str | None = None
    eta: Time | None = None
    assigned_team: str | None = None
    assigned_engineer: str | None = None
    appointment: Appointment | None = None
    attributes: dict[str, Scalar] = Field(default_factory=dict)
    updated_at: AwareDatetime


class EventRef(_Body):
    """Which business event caused a change."""

    id: Id
    source: str
    type: str
    time: AwareDatetime | None = None


class CaseChanged(_Body):
    """An applied change to a case: the event and the resulting state."""

    event: EventRef
    state: CaseState
    late: bool = Field(
        default=False,
        description=(
            "The event was older than news the case already had: it only filled in fields "
            "no newer event set. The state is current, but the event is no news to announce."
        ),
    )


class ChannelAddress(_Body):
    """One channel's address and whether it still works."""

    address: str
    status: Literal["valid", "bounced", "unreachable"] = "valid"


class QuietHours(_Body):
    """A daily window, in the customer's local time, when they must not be contacted."""

    start: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
    end: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


class ContactPreferences(_Body):
    """Full snapshot of one customer's contact preferences (compacted topic)."""

    customer_id: Id
    version: int = Field(ge=1)
    channels: dict[Channel, ChannelAddress] = Field(default_factory=dict)
    ranking: list[Channel] = Field(default_factory=list)
    consents: dict[Topic, dict[Channel, bool]] = Field(
        default_factory=dict, description="Current consent per topic and channel, from the ledger."
    )
    locale: Locale = "en"
    time_zone: str = "UTC"
    quiet_hours: QuietHours | None = None
    updated_at: AwareDatetime


class Priority(StrEnum):
    """Service messages may reach customers where marketing may not."""

    SERVICE = "service"
    MARKETING = "marketing"


class MessageTemplate(_Body):
    """One channel's message in one locale; Jinja2 sandboxed templates."""

    body: str = Field(max_length=10_000)
    subject: str | None = Field(default=None, max_length=500)
    html: str | None = Field(default=None, max_length=100_000)


class CampaignRef(_Body):
    """What a contact request carries of its campaign: the version it started with."""

    id: Id
    version: int = Field(ge=1)
    name: str
    topic: Topic
    priority: Priority = Priority.SERVICE
    messages: dict[Channel, dict[Locale, MessageTemplate]]
    still_applies: str | None = Field(
        default=None,
        max_length=2000,
        description="CEL expression over the latest case state, re-checked at send time.",
    )
    max_attempts: int = Field(default=3, ge=1, le=10)
    success: Literal["delivered", "engaged"] = Field(
        default="delivered", description="What ends escalation: delivery, or a customer reply."
    )
    escalate_after_seconds: int | None = Field(
        default=None, ge=0, description="Wait this long for success before the next channel."
    )
    cap_policy: Literal["defer", "suppress"] = Field(
        default="defer", description="What a frequency cap does to this campaign's contacts."
    )
    critical: bool = Field(
        default=False, description="Service-critical: may use the configured critical window."
    )
    sms_segment_limit: int | None = Field(default=None, ge=1, le=10)
    counts_towards_cap: bool = Field(
        default=True,
        description=(
            "False: this campaign's contacts neither count towards the customer's frequency "
            "caps nor are held back by them (e.g. service notices)."
        ),
    )


# The start of a scheduled fire's trigger key: such a request repeats its campaign on purpose.
SCHEDULED_FIRE = "fire:"


class ContactRequest(_Body):
    """Ask the dispatcher to contact one customer about one case for one campaign."""

    request_id: Id
    campaign: CampaignRef
    customer_id: Id
    case_id: Id | None = None
    case_version: int | None = None
    case_state: CaseState | None = Field(
        default=None, description="State at trigger time; the dispatcher prefers a newer one."
    )
    trigger_key: str = Field(
        description=(
            "What triggered the request within its campaign: a case version, or a scheduled "
            "fire ('fire:' and its time)."
        )
    )
    requested_at: AwareDatetime
    not_before: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    attempt: int = Field(default=1, ge=1)
    tried_channels: list[Channel] = Field(
        default_factory=list, description="Channels already attempted for this request."
    )
    escalation_of: Id | None = Field(
        default=None,
        description="Set when an escalation timer fires: the message whose success is checked.",
    )

    @property
    def first_contact(self) -> bool:
        """The customer's own contact, not an escalation of one: what the frequency caps hold
        back and count, and what campaign stats count once when it ends unsent. Any attempt:
        a contact whose first channel failed before sending, deferred on a later channel,
        comes back as a later attempt and is still the customer's first (escalations always
        name the message they follow)."""
        return self.escalation_of is None


class _Outbound(_Body):
    message_id: Id
    request_id: Id
    campaign_id: Id
    customer_id: Id
    case_id: Id | None = None
    attempt: int = Field(default=1, ge=1)
    locale: Locale = "en"
    expires_at: AwareDatetime | None = Field(
        default=None,
        description=(
            "The contact request's expiry (also the window for a call-back asked for in reply)."
        ),
    )
    send_by: AwareDatetime | None = Field(
        default=None,
        description=(
            "When the channel's window (quiet hours, legal contact hours) closes: a message not "
            "handed to the provider by then fails as 'expired' rather than reach the customer "
            "at night."
        ),
    )
    created_at: AwareDatetime

    @property
    def deadline(self) -> datetime | None:
        """The last moment the message may be sent: its expiry or its send-by, the earlier."""
        times = [t for t in (self.expires_at, self.send_by) if t is not None]
        return min(times) if times else None


class OutboundSms(_Outbound):
    """A rendered SMS for the sms-sender."""

    to: str = Field(description="E.164 phone number.")
    body: str
    segments: int = Field(ge=1)
    encoding: Literal["GSM-7", "UCS-2"]


class OutboundEmail(_Outbound):
    """A rendered email for the email-sender."""

    to: str
    subject: str
    text: str
    html: str | None = None
    unsubscribe_url: str | None = None
    topic: Topic | None = Field(
        default=None,
        description="The campaign's consent topic: a one-click unsubscribe withdraws this one.",
    )


class OutboundVoice(_Outbound):
    """A rendered IVR call for the voice-sender."""

    to: str = Field(description="E.164 phone number.")
    say: str
    language: str


DeliveryState = Literal[
    "sending",
    "sent",
    "delivered",
    "failed",
    "undelivered",
    "unknown",
    "answered",
    "no-answer",
    "busy",
    "machine",
    "suppressed",
]

# Why the dispatcher decided not to contact a customer (`DeliveryStatus.reason` of a
# `suppressed` status). Deferrals (quiet hours, a cap that frees later) are not suppressions.
SuppressionReason = Literal[
    "expired",
    "still-applies",
    "superseded",
    "no-ranking",
    "no-consent",
    "no-valid-address",
    "no-message",
    "no-channel",
    "quiet-hours",
    "frequency-cap",
    "repeated-content",
    "campaign-archived",
]
SUPPRESSION_REASONS: tuple[str, ...] = get_args(SuppressionReason)
# Why the dispatcher failed a contact before any message went out (`DeliveryStatus.reason` of
# its `failed` status, after every channel it could try): the rule that failed it.
ContactFailure = Literal["render", "segment-limit", "still-applies"]
CONTACT_FAILURES: tuple[str, ...] = get_args(ContactFailure)


# The start of the message id of a call-back call (the voice sender's `callback-<reply id>`):
# its statuses carry the campaign whose message the customer answered, and are counted for that
# campaign apart from its own channels.
CALLBACK_MESSAGE = "callback-"
# The `campaign_id` of a call-back's statuses when the reply named no campaign (replies from
# before replies carried one).
CALLBACK_CAMPAIGN = "callback"


class DeliveryStatus(_Body):
    """A status of one message, from a sender; or, from the dispatcher, a contact for which no
    message went out: status `suppressed` (it decided not to contact the customer) or `failed`
    (no message could be made on any channel tried: a template that does not render, an SMS
    over the segment limit, a still-applies expression that cannot be evaluated)."""

    message_id: Id = Field(
        description=(
            "The message; for the dispatcher's `suppressed` and `failed`, an id derived from "
            "the request alone; for a call-back call, `callback-<reply id>`."
        )
    )
    request_id: Id = Field(
        description=(
            "The contact request; for a call-back call, the message the customer answered "
            "(the reply, when it named none)."
        )
    )
    campaign_id: Id = Field(
        description=(
            "For a call-back call, the campaign whose message the customer answered "
            "(`callback` when the reply did not say)."
        )
    )
    customer_id: Id
    case_id: Id | None = None
    channel: Channel | None = Field(
        default=None,
        description=(
            "Always set by senders; on the dispatcher's `suppressed` and `failed`, only when "
            "a channel was chosen (for `failed`, the last one tried)."
        ),
    )
    status: DeliveryState
    provider_id: str | None = None
    error_code: str | None = None
    reason: str | None = Field(
        default=None,
        description=(
            "Free text from a sender; on `suppressed`, one of the suppression reasons; on the "
            "dispatcher's `failed`, the rule that failed the contact (`CONTACT_FAILURES`: "
            "`render`, `segment-limit`, `still-applies`)."
        ),
    )
    at: AwareDatetime


Intent = Literal[
    "stop", "start", "help", "confirm", "reschedule", "callback", "unsubscribe", "other"
]


class EngagementReply(_Body):
    """A customer's answer: a keyword, keypad press, click or unsubscribe."""

    reply_id: Id
    customer_id: Id
    channel: Channel | Literal["web"]
    intent: Intent
    text: str | None = Field(default=None, max_length=2000)
    message_id: Id | None = None
    campaign_id: Id | None = Field(
        default=None,
        description=(
            "The campaign whose message was answered, when the channel that answered knows it: "
            "a call-back is reported for it."
        ),
    )
    case_id: Id | None = None
    topic: Topic | None = None
    at: AwareDatetime
    callback_number: str | None = Field(
        default=None,
        description="E.164 number to call back, set on a 'callback' reply from a phone channel.",
    )
    callback_until: AwareDatetime | None = Field(
        default=None,
        description=(
            "End of the campaign's window for a call-back (the expiry of the contact answered): "
            "the call is placed before it, inside legal calling hours, or not at all."
        ),
    )
    locale: Locale | None = Field(
        default=None,
        description=(
            "The language the customer was addressed in (BCP 47), when the channel that "
            "answered knows it: a call-back speaks it."
        ),
    )


class TimerRequest(_Body):
    """A durable timer the scheduler fires once at due_at, or cancels by key."""

    timer_id: Id
    key: str = Field(description="Cancellation key, e.g. the request id being escalated.")
    action: Literal["schedule", "cancel"] = "schedule"
    due_at: AwareDatetime | None = None
    reason: str | None = None
    request: ContactRequest | None = Field(
        default=None, description="Re-sent when the timer fires."
    )
    reply: EngagementReply | None = Field(
        default=None,
        description=(
            "Re-published to engagement.replies.v1 (same event id) when the timer fires: a "
            "call-back deferred until the calling window opens. Set instead of `request`."
        ),
    )


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    from datetime import UTC

    return datetime.now(UTC)
