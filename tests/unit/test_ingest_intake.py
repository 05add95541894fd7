"""Intake rules without the network: per-type rules, custom types, status page locales."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.structs import ConsumerRecord

from herald_ingest.domain.intake import EventCatalog, Rejected, parse_structured
from herald_ingest.domain.projection import Projection, apply, order_key
from herald_ingest.domain.status_text import pick_locale, when, words
from herald_ingest.messaging.inbound import to_event
from herald_kit import DecodeError


@pytest.mark.parametrize(
    "type_,data,field",
    [
        ("appointment.booked", {"case_id": "c"}, "data.appointment"),
        ("appointment.rescheduled", {"case_id": "c", "appointment": None}, "data.appointment"),
        ("case.status_changed", {"case_id": "c"}, "data.status"),
        ("case.updated", {"status": "x"}, "data.case_id"),
        ("case.exploded", {"case_id": "c"}, "type"),
        ("case.updated", {"case_id": "acme/42"}, "data.case_id"),
        ("case.updated", {"case_id": "c", "customer_ids": ["a", "b/c"]}, "data.customer_ids.1"),
    ],
)
def test_type_rules_name_the_field(type_: str, data: dict[str, object], field: str) -> None:
    with pytest.raises(Rejected) as err:
        EventCatalog().validate(type_, data)
    assert err.value.field == field


@pytest.mark.parametrize(
    "type_,status",
    [("case.opened", "open"), ("case.resolved", "resolved"), ("case.closed", "closed")],
)
def test_lifecycle_types_set_their_status(type_: str, status: str) -> None:
    assert EventCatalog().validate(type_, {"case_id": "c"}).status == status
    # An explicit status still wins.
    assert EventCatalog().validate(type_, {"case_id": "c", "status": "x"}).status == "x"


def test_custom_type_maps_extra_fields_to_attributes() -> None:
    catalog = EventCatalog({"meter.read": {"type": "object", "required": ["case_id", "kwh"]}})
    body = catalog.validate("meter.read", {"case_id": "c", "kwh": 12.5, "nested": {"no": 1}})
    assert body.attributes == {"kwh": 12.5}
    with pytest.raises(Rejected) as err:
        catalog.validate("meter.read", {"case_id": "c"})
    assert err.value.field == "data"


@pytest.mark.parametrize(
    "data,field",
    [
        ({"case_id": "c", "attributes": "ab"}, "data.attributes"),
        ({"case_id": "c", "attributes": [1]}, "data.attributes"),
        ({"case_id": "c", "attributes": 7}, "data.attributes"),
        ({"case_id": "c", "attributes": {"kwh": 10**20}}, "data.attributes.kwh"),
        ({"case_id": "c", "kwh": 10**20}, "data.kwh"),  # a top-level field, named as sent
        ({"case_id": "c", "sequence": 2**63}, "data.sequence"),
    ],
)
def test_custom_type_bad_attributes_name_the_field(data: dict[str, object], field: str) -> None:
    catalog = EventCatalog({"meter.read": {"type": "object", "required": ["case_id"]}})
    with pytest.raises(Rejected) as err:
        catalog.validate("meter.read", data)
    assert err.value.field == field


@pytest.mark.parametrize(
    "attributes,field",
    [
        # The database refuses these as field names: a 500 for the whole shared batch before.
        ({"order.ref": "A-1"}, "data.attributes.order.ref"),
        ({"$where": 1}, "data.attributes.$where"),
        ({"a\x00b": 1}, "data.attributes.a\x00b"),
        ({"": 1}, "data.attributes."),
        ({"n" * 101: 1}, "data.attributes." + "n" * 101),
        # Bounded so that a case's state fits in the record ingest publishes.
        ({"notes": "x" * 1001}, "data.attributes.notes"),
        ({f"a{i}": i for i in range(101)}, "data.attributes"),
    ],
)
def test_attributes_the_database_or_the_broker_cannot_take_name_the_field(
    attributes: dict[str, object], field: str
) -> None:
    with pytest.raises(Rejected) as err:
        EventCatalog().validate("case.updated", {"case_id": "c", "attributes": attributes})
    assert err.value.field == field


def test_the_largest_attributes_are_accepted() -> None:
    attributes = {f"{i:0>100}": "x" * 1000 for i in range(100)} | {"a$b": 1, "/x y": 2}
    del attributes[f"{0:0>100}"], attributes[f"{1:0>100}"]
    body = EventCatalog().validate("case.updated", {"case_id": "c", "attributes": attributes})
    assert body.attributes == attributes


@pytest.mark.parametrize(
    "data,field",
    [
        ({"case_id": "c", "order.ref": "A-1"}, "data.order.ref"),
        ({"case_id": "c", "$x": 1}, "data.$x"),
        ({"case_id": "c", "note": "x" * 1001}, "data.note"),
        ({"case_id": "c", "attributes": {"order.ref": "A-1"}}, "data.attributes.order.ref"),
    ],
)
def test_custom_type_fields_lifted_to_attributes_follow_the_attribute_rules(
    data: dict[str, object], field: str
) -> None:
    catalog = EventCatalog({"meter.read": {"type": "object", "required": ["case_id"]}})
    with pytest.raises(Rejected) as err:
        catalog.validate("meter.read", data)
    assert err.value.field == field


def test_custom_type_keeps_given_attributes_beside_lifted_ones() -> None:
    catalog = EventCatalog({"meter.read": {"type": "object", "required": ["case_id"]}})
    body = catalog.validate("meter.read", {"case_id": "c", "kwh": 2, "attributes": {"m": "x"}})
    assert body.attributes == {"m": "x", "kwh": 2}


@pytest.mark.parametrize(
    "wanted,accept,expected",
    [
        ("zh-CN", None, "zh-CN"),
        ("zh-Hans-CN", None, "zh-CN"),
        ("en-GB", None, "en-GB"),
        (None, "fr-FR,zh;q=0.8", "zh-CN"),
        ("fr", None, "en"),
        (None, None, "en"),
        ("not a locale", "also bad", "en"),
    ],
)
def test_pick_locale(wanted: str | None, accept: str | None, expected: str) -> None:
    assert pick_locale(wanted, accept) == expected


def test_dates_and_words_follow_the_locale() -> None:
    at = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
    assert "2026年11月25日" in when(at, "zh-CN")
    assert when(at, "en-GB").startswith("25 Nov 2026")
    assert words("en-US")["confirm"] == "Confirm"
    assert words("zh-CN")["confirm"] == "确认"
    assert set(words("en")) == set(words("zh-CN"))  # every word translated


# -- an event's time -------------------------------------------------------------------------

RECEIVED = datetime(2026, 5, 1, 12, tzinfo=UTC)


def _posted(time: datetime, status: str = "engineer booked", n: int = 1) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": f"e{n}",
        "source": "/crm",
        "type": "case.updated",
        "time": time.isoformat(),
        "data": {"case_id": "case-7", "customer_ids": ["c1"], "status": status},
    }


def test_an_event_from_the_future_is_refused_and_cannot_freeze_its_case() -> None:
    # A sender's typo (2062 for 2026) would rank above every correct update of the case.
    with pytest.raises(Rejected) as err:
        parse_structured(_posted(RECEIVED.replace(year=2062)), received=RECEIVED)
    assert err.value.field == "time"
    # A clock a little ahead is no typo: the event goes in, and the next update, received
    # the next day, is newer news than it.
    ahead = parse_structured(_posted(RECEIVED + timedelta(minutes=4)), received=RECEIVED)
    later = RECEIVED + timedelta(days=1)
    update = parse_structured(_posted(later, "visit cancelled", 2), received=later)
    case = Projection(None, {})
    for event, now in ((ahead, RECEIVED), (update, later)):
        key = order_key(
            event.data, source=event.source, time=event.time, received=now, event_key=event.key
        )
        case = apply(case, event.data, key=key, now=now) or case
    assert case.state is not None and case.state.status == "visit cancelled"


def test_how_far_ahead_an_event_time_may_be_is_the_catalogs() -> None:
    strict = EventCatalog(max_time_ahead=timedelta(0))
    assert parse_structured(_posted(RECEIVED), strict, received=RECEIVED).time == RECEIVED
    with pytest.raises(Rejected) as err:
        parse_structured(_posted(RECEIVED + timedelta(seconds=1)), strict, received=RECEIVED)
    assert err.value.field == "time"


def test_a_kafka_event_from_the_future_is_dead_lettered_naming_its_time() -> None:
    ahead = (datetime.now(UTC) + timedelta(days=1)).isoformat().encode()
    value = b'{"case_id": "case-7", "status": "engineer booked"}'
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"k-1"),
        ("ce_source", b"/erp"),
        ("ce_type", b"case.updated"),
        ("ce_time", ahead),
        ("content-type", b"application/json"),
    ]
    record = ConsumerRecord("t", 0, 0, 0, 0, b"case-7", value, None, 6, len(value), headers)
    with pytest.raises(DecodeError) as err:  # a DecodeError is what sends a record to the DLQ
        to_event(record, EventCatalog())
    assert err.value.field == "time"
