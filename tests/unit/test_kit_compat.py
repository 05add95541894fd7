"""What another version of Herald wrote is read with the fields this one does not know ignored,
counted and named in a debug log (never their values); anything else wrong still fails."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from herald_contracts import Appointment, CaseState
from herald_kit import validate_own
from herald_kit._metrics import UNKNOWN_FIELDS

NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
STATE = CaseState(
    case_id="case-1", version=2, appointment=Appointment(starts_at=NOW), updated_at=NOW
)


def _newer() -> dict[str, object]:
    row = STATE.model_dump(mode="json")
    row["escalated"] = "+447700900123"
    row["appointment"]["engineer_phone"] = "+447700900456"
    return row


def test_unknown_fields_are_ignored_counted_and_named_without_their_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted = UNKNOWN_FIELDS.labels("test.cases")
    before = counted._value.get()
    with caplog.at_level(logging.DEBUG, logger="herald.compat"):
        assert validate_own(CaseState, _newer(), kind="test.cases") == STATE
    assert counted._value.get() - before == 2
    (logged,) = caplog.records
    assert logged.levelno == logging.DEBUG
    assert logged.__dict__["kind"] == "test.cases"
    assert sorted(logged.__dict__["fields"]) == ["appointment.engineer_phone", "escalated"]
    assert "+4477" not in str(logged.__dict__)


def test_json_and_documents_alike() -> None:
    assert validate_own(CaseState, json.dumps(_newer()), kind="test.cases") == STATE
    assert validate_own(CaseState, STATE.model_dump_json(), kind="test.cases") == STATE


def test_a_real_violation_still_fails_and_is_what_the_error_names() -> None:
    row = _newer() | {"version": 0}
    with pytest.raises(ValidationError) as caught:
        validate_own(CaseState, row, kind="test.cases")
    assert [e["loc"] for e in caught.value.errors()] == [("version",)]


def test_the_models_stay_strict_for_input_from_outside() -> None:
    with pytest.raises(ValidationError) as caught:
        CaseState.model_validate(_newer())
    assert {e["type"] for e in caught.value.errors()} == {"extra_forbidden"}
