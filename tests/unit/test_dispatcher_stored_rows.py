"""Rows the dispatcher stored before its view and attempt documents held JSON strings are read
as before: an upgrade neither rebuilds the views nor loses a pending escalation."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from herald_contracts import (
    CampaignRef,
    CaseState,
    ChannelAddress,
    ContactPreferences,
    ContactRequest,
    MessageTemplate,
)
from herald_dispatcher.adapters.store import _snapshot, stored_request

NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)


def _prefs() -> ContactPreferences:
    return ContactPreferences(
        customer_id="cust-1",
        version=4,
        channels={"sms": ChannelAddress(address="+12015550123")},
        ranking=["sms"],
        consents={"service-updates": {"sms": True}},
        locale="zh-CN",
        time_zone="Asia/Shanghai",
        updated_at=NOW,
    )


def _request() -> ContactRequest:
    case = CaseState(
        case_id="case-1", version=3, customer_ids=["cust-1"], status="delayed", updated_at=NOW
    )
    campaign = CampaignRef(
        id="camp-1",
        version=2,
        name="Delays",
        topic="service-updates",
        messages={"sms": {"zh": MessageTemplate(body="您的包裹{{ case.status }}")}},
    )
    return ContactRequest(
        request_id="req-1",
        campaign=campaign,
        customer_id="cust-1",
        case_id="case-1",
        case_version=3,
        case_state=case,
        trigger_key="case-1:3",
        requested_at=NOW,
        attempt=2,
        tried_channels=["sms"],
        escalation_of="msg-1",
    )


def test_view_rows_of_both_shapes_give_the_same_snapshot() -> None:
    prefs = _prefs()
    new_row = {"_id": "cust-1", "version": 4, "json": prefs.model_dump_json()}
    old_row = {"_id": "cust-1", "version": 4, "body": prefs.model_dump(mode="json")}
    assert _snapshot(ContactPreferences, new_row) == prefs
    assert _snapshot(ContactPreferences, old_row) == prefs
    assert _snapshot(ContactPreferences, None) is None


def test_a_pending_escalation_of_either_shape_is_the_request_that_was_stored() -> None:
    request = _request()
    assert stored_request(request.model_dump_json()) == request
    assert stored_request(request.model_dump(mode="json")) == request


def test_rows_a_newer_version_stored_are_read_with_unknown_fields_ignored() -> None:
    """During a rolling update a newer replica's rows (a field this version does not know, at
    the top and nested) are read as what this version knows of them, not refused."""
    prefs = _prefs()
    body = prefs.model_dump(mode="json")
    body["new_optional_field"] = 1
    body["channels"]["sms"]["verified_at"] = NOW.isoformat()
    for row in ({"_id": "cust-1", "version": 4, "json": json.dumps(body)}, {"body": body}):
        assert _snapshot(ContactPreferences, row) == prefs
    request = _request()
    stored = request.model_dump(mode="json")
    stored["new_optional_field"] = None
    stored["case_state"]["new_state_field"] = "x"
    assert stored_request(json.dumps(stored)) == request
    assert stored_request(stored) == request
