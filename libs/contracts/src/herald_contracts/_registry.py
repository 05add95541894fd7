"""CloudEvent types: each names its body model and its topic."""

from __future__ import annotations

import builtins
from dataclasses import dataclass

from pydantic import BaseModel

from herald_contracts._events import (
    INBOUND_EVENT_TYPES,
    INBOUND_MODELS,
    CaseChanged,
    CaseEventData,
    CaseState,
    ContactPreferences,
    ContactRequest,
    DeliveryStatus,
    EngagementReply,
    OutboundEmail,
    OutboundSms,
    OutboundVoice,
    TimerRequest,
)
from herald_contracts._topics import Topic, Topics

SOURCE_PREFIX = "/herald/"


@dataclass(frozen=True, slots=True)
class EventType:
    """A CloudEvents `type`, the model of its data and the topic it travels on."""

    type: str
    model: builtins.type[BaseModel]
    topic: Topic
    version: int = 1

    @property
    def schema_name(self) -> str:
        """File name of its JSON Schema under schemas/events/."""
        return f"{self.type}.v{self.version}.json"

    @property
    def dataschema(self) -> str:
        """The CloudEvents `dataschema` attribute."""
        return f"schemas/events/{self.schema_name}"


CASE_CHANGED = EventType("herald.case.changed", CaseChanged, Topics.CASES_CHANGES)
CASE_STATE = EventType("herald.case.state", CaseState, Topics.CASES_STATE)
CONTACT_PREFERENCES = EventType(
    "herald.contact.preferences", ContactPreferences, Topics.CONTACTS_PREFERENCES
)
CONTACT_REQUESTED = EventType("herald.contact.requested", ContactRequest, Topics.CONTACT_REQUESTS)
TIMER_REQUESTED = EventType("herald.timer.requested", TimerRequest, Topics.TIMERS_REQUESTS)
OUTBOUND_SMS = EventType("herald.outbound.sms", OutboundSms, Topics.OUTBOUND_SMS)
OUTBOUND_EMAIL = EventType("herald.outbound.email", OutboundEmail, Topics.OUTBOUND_EMAIL)
OUTBOUND_VOICE = EventType("herald.outbound.voice", OutboundVoice, Topics.OUTBOUND_VOICE)
DELIVERY_STATUS = EventType("herald.delivery.status", DeliveryStatus, Topics.DELIVERY_STATUS)
ENGAGEMENT_REPLY = EventType("herald.engagement.reply", EngagementReply, Topics.ENGAGEMENT_REPLIES)

INBOUND: dict[str, EventType] = {
    t: EventType(t, INBOUND_MODELS.get(t, CaseEventData), Topics.EVENTS_INBOUND)
    for t in INBOUND_EVENT_TYPES
}

INTERNAL: tuple[EventType, ...] = (
    CASE_CHANGED,
    CASE_STATE,
    CONTACT_PREFERENCES,
    CONTACT_REQUESTED,
    TIMER_REQUESTED,
    OUTBOUND_SMS,
    OUTBOUND_EMAIL,
    OUTBOUND_VOICE,
    DELIVERY_STATUS,
    ENGAGEMENT_REPLY,
)

ALL_EVENT_TYPES: tuple[EventType, ...] = (*INBOUND.values(), *INTERNAL)
BY_TYPE: dict[str, EventType] = {e.type: e for e in ALL_EVENT_TYPES}
