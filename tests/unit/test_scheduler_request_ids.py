"""Request ids: a fan-out's fast ids are the ids event triggers and replays compute."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from herald_scheduler.domain.campaigns import REQUEST_NAMESPACE, RequestIds, request_id

names = st.text(min_size=1, max_size=40)


@given(campaign=names, trigger=names, customers=st.lists(names, min_size=1, max_size=5))
def test_fan_out_ids_equal_request_id(campaign: str, trigger: str, customers: list[str]) -> None:
    # A fire that resumes, or a dry run, must name every customer's request as before; and the
    # dispatcher drops a re-sent request only because its id is the same.
    ids = RequestIds(campaign, trigger)
    for customer in customers:
        got = ids(customer)
        assert got == request_id(campaign, trigger, customer)
        assert uuid.UUID(got).version == 5


def test_ids_are_the_documented_uuid5() -> None:
    expected = uuid.uuid5(REQUEST_NAMESPACE, "camp-1|fire:2026-11-25T08:00:00Z|cust-9")
    assert RequestIds("camp-1", "fire:2026-11-25T08:00:00Z")("cust-9") == str(expected)
    assert RequestIds("camp-1", "fire:a")("cust-9") != RequestIds("camp-1", "fire:b")("cust-9")
