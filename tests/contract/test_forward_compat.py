"""Old and new replicas run side by side during a rolling update (docs/operations.md): a record a
newer version publishes to one of Herald's own topics, with fields this version does not know,
decodes as the consumers decode it. Input from outside (events.inbound) stays strict."""

from __future__ import annotations

import json
import typing
from datetime import UTC, datetime, timedelta
from types import UnionType
from typing import Any, Union

import pytest
from aiokafka.structs import ConsumerRecord
from pydantic import BaseModel

from herald_contracts import (
    ENGAGEMENT_REPLY,
    INBOUND,
    Appointment,
    CampaignRef,
    CaseChanged,
    CaseState,
    ChannelAddress,
    ContactPreferences,
    ContactRequest,
    DeliveryStatus,
    EngagementReply,
    EventRef,
    EventType,
    MessageTemplate,
    OutboundEmail,
    OutboundSms,
    OutboundVoice,
    QuietHours,
    TimerRequest,
)
from herald_contracts._registry import INTERNAL
from herald_ingest.domain.intake import EventCatalog
from herald_ingest.messaging.inbound import to_event
from herald_kit import DecodeError, decode, encode

NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
UNKNOWN = "field_of_a_newer_version"

_STATE = CaseState(
    case_id="case-1",
    version=3,
    customer_ids=["cust-1"],
    status="engineer-booked",
    appointment=Appointment(starts_at=NOW, ends_at=NOW + timedelta(hours=2)),
    attributes={"tier": "gold"},
    updated_at=NOW,
)
_REQUEST = ContactRequest(
    request_id="req-1",
    campaign=CampaignRef(
        id="camp-1",
        version=2,
        name="Visits",
        topic="service-updates",
        messages={"sms": {"en": MessageTemplate(body="Your engineer comes at {{ case.eta }}")}},
    ),
    customer_id="cust-1",
    case_id="case-1",
    case_version=3,
    case_state=_STATE,
    trigger_key="case-1:3",
    requested_at=NOW,
)
_REPLY = EngagementReply(
    reply_id="rep-1",
    customer_id="cust-1",
    channel="sms",
    intent="callback",
    campaign_id="camp-1",
    callback_number="+447700900123",
    callback_until=NOW + timedelta(hours=3),
    at=NOW,
)
_OUTBOUND: dict[str, Any] = {
    "message_id": "msg-1",
    "request_id": "req-1",
    "campaign_id": "camp-1",
    "customer_id": "cust-1",
    "send_by": NOW + timedelta(hours=3),
    "created_at": NOW,
}

# One record per event type on Herald's own topics, every nested model present: an event type
# added without a sample here fails test_every_own_event_type_has_a_full_sample.
SAMPLES: dict[type[BaseModel], BaseModel] = {
    CaseChanged: CaseChanged(
        event=EventRef(id="e1", source="crm", type="case.updated", time=NOW), state=_STATE
    ),
    CaseState: _STATE,
    ContactPreferences: ContactPreferences(
        customer_id="cust-1",
        version=4,
        channels={"sms": ChannelAddress(address="+447700900123")},
        ranking=["sms"],
        consents={"service-updates": {"sms": True}},
        quiet_hours=QuietHours(start="21:00", end="08:00"),
        updated_at=NOW,
    ),
    ContactRequest: _REQUEST,
    TimerRequest: TimerRequest(
        timer_id="t1", key="req-1", due_at=NOW, request=_REQUEST, reply=_REPLY
    ),
    OutboundSms: OutboundSms(
        **_OUTBOUND, to="+447700900123", body="hi", segments=1, encoding="GSM-7"
    ),
    OutboundEmail: OutboundEmail(**_OUTBOUND, to="a@example.com", subject="s", text="t"),
    OutboundVoice: OutboundVoice(**_OUTBOUND, to="+447700900123", say="hi", language="en-GB"),
    DeliveryStatus: DeliveryStatus(
        message_id="msg-1",
        request_id="req-1",
        campaign_id="camp-1",
        customer_id="cust-1",
        channel="sms",
        status="delivered",
        at=NOW,
    ),
    EngagementReply: _REPLY,
}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds: itself, or inside an Optional, a list or a dict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _required(annotation: Any) -> Any:
    """`X` of `X | None`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return (
        args[0]
        if typing.get_origin(annotation) in (Union, UnionType) and len(args) == 1
        else annotation
    )


def _reachable(model: type[BaseModel]) -> set[type[BaseModel]]:
    seen = {model}
    for info in model.model_fields.values():
        for inner in _models_in(info.annotation):
            if inner not in seen:
                seen |= _reachable(inner)
    return seen


def _with_unknown(
    model: type[BaseModel], data: dict[str, Any], path: str, out: dict[str, set[type]]
) -> None:
    """Add an unknown field to `data` and to every object in it that a model reads."""
    data[UNKNOWN] = {"nested": [1, "two"]}
    out.setdefault(path, set()).add(model)
    for name, info in model.model_fields.items():
        value = data.get(name)
        inner = _models_in(info.annotation)
        if value is None or not inner:
            continue
        (sub,) = inner
        origin = typing.get_origin(_required(info.annotation))
        if origin is dict:
            for k, v in value.items():
                _walk_values(sub, v, f"{path}.{name}.{k}", out)
        elif origin is list:
            for i, v in enumerate(value):
                _with_unknown(sub, v, f"{path}.{name}.{i}", out)
        else:
            _with_unknown(sub, value, f"{path}.{name}", out)


def _walk_values(model: type[BaseModel], value: Any, path: str, out: dict[str, set[type]]) -> None:
    # dict[Channel, dict[Locale, MessageTemplate]]: models sit one or more maps down.
    if isinstance(value, dict) and not (set(value) & set(model.model_fields)):
        for k, v in value.items():
            _walk_values(model, v, f"{path}.{k}", out)
    else:
        _with_unknown(model, value, path, out)


def _record(headers: list[tuple[str, bytes]], value: bytes) -> ConsumerRecord:  # type: ignore[type-arg]
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=0,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=headers,
    )


def _newer(et: EventType) -> tuple[ConsumerRecord, BaseModel, dict[str, set[type]]]:  # type: ignore[type-arg]
    """The sample as a newer version would publish it: an unknown field in every object."""
    sample = SAMPLES[et.model]
    headers, value = encode(et, sample, source="test")
    data = json.loads(value)
    places: dict[str, set[type]] = {}
    _with_unknown(et.model, data, "data", places)
    return _record(headers, json.dumps(data).encode()), sample, places


def test_every_own_event_type_has_a_full_sample() -> None:
    for et in INTERNAL:
        assert et.model in SAMPLES, f"{et.type}: add a sample with every nested model set"
        _, _, places = _newer(et)
        reached: set[type] = set().union(*places.values())
        missing = _reachable(et.model) - reached
        assert not missing, (
            f"{et.type}: the sample leaves out {sorted(m.__name__ for m in missing)}"
        )


@pytest.mark.parametrize("et", INTERNAL, ids=lambda e: e.type)
def test_a_newer_versions_record_decodes_with_unknown_fields_ignored(et: EventType) -> None:
    record, sample, places = _newer(et)
    assert len(places) > 1 or _reachable(et.model) == {et.model}  # nested ones too
    # As the consumers decode: with the model they expect, or by type (ingest's timeline).
    assert decode(record, et.model).data == sample
    assert decode(record).data == sample


@pytest.mark.parametrize("et", INTERNAL, ids=lambda e: e.type)
def test_a_real_violation_beside_an_unknown_field_still_fails_naming_the_field(
    et: EventType,
) -> None:
    record, _, _ = _newer(et)
    data = json.loads(record.value)
    broken = next(n for n, i in et.model.model_fields.items() if i.is_required())
    data[broken] = {"not": "valid"}
    with pytest.raises(DecodeError) as caught:
        decode(_record(list(record.headers), json.dumps(data).encode()), et.model)
    assert caught.value.field is not None and caught.value.field.startswith(broken)


@pytest.mark.parametrize("name", ["top", "nested"])
def test_an_inbound_event_with_an_unknown_field_is_refused_naming_it(name: str) -> None:
    """events.inbound carries what backend systems publish: a field Herald does not know is
    their mistake, dead-lettered with its name, not silently dropped."""
    et = INBOUND["appointment.booked"]
    body: dict[str, Any] = {"case_id": "case-1", "appointment": {"starts_at": NOW.isoformat()}}
    if name == "top":
        body["sumary"] = "typo"
        where = "data.sumary"
    else:
        body["appointment"]["engineeer"] = "typo"
        where = "data.appointment.engineeer"
    headers, _ = encode(et, SAMPLES[CaseState], source="crm")
    with pytest.raises(DecodeError) as caught:
        to_event(_record(headers, json.dumps(body).encode()), EventCatalog())
    assert caught.value.field == where


def test_enum_values_stay_strict() -> None:
    """A value this version does not know (a new intent, a new delivery state) is one it cannot
    act on: such a record is refused, not guessed at (docs/operations.md, "Upgrading")."""
    headers, value = encode(ENGAGEMENT_REPLY, _REPLY, source="test")
    data = json.loads(value) | {"intent": "snooze"}
    with pytest.raises(DecodeError) as caught:
        decode(_record(headers, json.dumps(data).encode()), EngagementReply)
    assert caught.value.field == "intent"
