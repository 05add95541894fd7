"""CloudEvents binary mode on Kafka: what we encode decodes; what is broken is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiokafka.structs import ConsumerRecord

from herald_contracts import CASE_STATE, CaseState
from herald_kit import DecodeError, decode, encode


def _record(headers: list[tuple[str, bytes]], value: bytes, key: bytes = b"c1") -> ConsumerRecord:  # type: ignore[type-arg]
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=0,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=2,
        serialized_value_size=len(value),
        headers=headers,
    )


STATE = CaseState(case_id="c1", version=3, status="delayed", updated_at=datetime.now(UTC))


def test_round_trip_keeps_attributes_body_and_trace() -> None:
    headers, value = encode(CASE_STATE, STATE, source="ingest", event_id="c1:3", subject="c1")
    names = {k for k, _ in headers}
    assert {"ce_id", "ce_source", "ce_type", "ce_specversion", "traceparent"} <= names
    event = decode(_record(headers, value))
    assert event.id == "c1:3" and event.type == "herald.case.state"
    assert event.source == "/herald/ingest" and event.subject == "c1"
    assert event.data == STATE
    assert event.trace is not None


def test_not_a_cloudevent() -> None:
    with pytest.raises(DecodeError, match="ce_type"):
        decode(_record([], b"{}"))


def test_bad_bytes() -> None:
    headers, _ = encode(CASE_STATE, STATE, source="ingest")
    with pytest.raises(DecodeError):
        decode(_record(headers, b"\xff\xfe not json"))


def test_schema_violation_names_the_field() -> None:
    headers, _ = encode(CASE_STATE, STATE, source="ingest")
    with pytest.raises(DecodeError) as info:
        decode(_record(headers, b'{"case_id": "c1", "version": 0, "updated_at": "x"}'))
    assert info.value.field in ("version", "updated_at")


def test_unknown_type() -> None:
    headers, value = encode(CASE_STATE, STATE, source="ingest")
    headers = [(k, b"no.such.type" if k == "ce_type" else v) for k, v in headers]
    with pytest.raises(DecodeError, match="unknown event type"):
        decode(_record(headers, value))


def test_transient_database_errors_are_retried_not_dead_lettered() -> None:
    from pymongo.errors import AutoReconnect, DuplicateKeyError, OperationFailure

    from herald_kit import is_transient_db_error

    assert is_transient_db_error(OperationFailure("database is locked (5) (SQLITE_BUSY)"))
    assert is_transient_db_error(OperationFailure("not primary", code=10107))
    assert is_transient_db_error(AutoReconnect("connection reset"))
    assert not is_transient_db_error(OperationFailure("bad query", code=2))
    assert not is_transient_db_error(DuplicateKeyError("dup", code=11000))
