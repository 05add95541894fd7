"""Case projection: any arrival order of the same events converges; late events never regress."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from herald_contracts import Appointment, CaseEventData
from herald_ingest.domain.projection import OrderKey, Projection, apply, order_key

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
statuses = st.sampled_from(["open", "delayed", "engineer booked", "resolved", None])


def _key(
    data: CaseEventData, event_key: str, time: datetime | None, received: datetime = T0
) -> OrderKey:
    return order_key(
        data,
        source=event_key.partition("|")[0],
        time=time,
        received=received,
        event_key=event_key,
    )


@st.composite
def event_lists(draw: st.DrawFn) -> list[tuple[str, datetime, CaseEventData]]:
    n = draw(st.integers(min_value=1, max_value=8))
    use_sequence = draw(st.booleans())
    out = []
    for i in range(n):
        data = CaseEventData(
            case_id="c1",
            customer_ids=draw(st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True)),
            sequence=i if use_sequence else None,
            status=draw(statuses),
            summary=draw(st.sampled_from(["s1", "s2", None])),
            attributes=draw(st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 3))),
        )
        out.append((f"src|e{i}", T0 + timedelta(seconds=i), data))
    return out


def _final(events: list[tuple[str, datetime, CaseEventData]]) -> dict[str, object] | None:
    proj = Projection(None, {})
    for key, time, data in events:
        nxt = apply(proj, data, key=_key(data, key, time), now=T0)
        if nxt is not None:
            if proj.state is not None and nxt.state is not None and nxt.state_changed:
                assert nxt.state.version == proj.state.version + 1
            proj = nxt
    if proj.state is None:
        return None
    state = proj.state.model_dump(exclude={"version", "updated_at"})
    state["customer_ids"] = sorted(state["customer_ids"])
    return state


@settings(max_examples=200, deadline=None)
@given(event_lists(), st.randoms(use_true_random=False))
def test_shuffled_orders_converge(events: list, rnd) -> None:  # type: ignore[no-untyped-def]
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert _final(events) == _final(shuffled)


def test_late_event_does_not_overwrite_newer_status() -> None:
    new = CaseEventData(case_id="c1", sequence=2, status="engineer 16:00")
    old = CaseEventData(case_id="c1", sequence=1, status="engineer 14:00", summary="boiler")
    p1 = apply(Projection(None, {}), new, key=_key(new, "s|2", T0), now=T0)
    assert p1 is not None
    p2 = apply(p1, old, key=_key(old, "s|1", T0), now=T0)
    assert p2 is not None and p2.state is not None
    assert p2.state.status == "engineer 16:00"  # not regressed
    assert p2.state.summary == "boiler"  # a field nobody newer set is still taken
    assert p2.state.version == 2


def test_replaying_an_event_changes_nothing() -> None:
    ev = CaseEventData(case_id="c1", status="open")
    key = _key(ev, "s|1", T0)
    p1 = apply(Projection(None, {}), ev, key=key, now=T0)
    assert p1 is not None
    assert apply(p1, ev, key=key, now=T0) is None


def _status_after(events: list[tuple[str, datetime | None, CaseEventData]]) -> str | None:
    """The status after applying events in arrival order, each received a minute after the
    one before."""
    proj = Projection(None, {})
    for n, (event_key, time, data) in enumerate(events):
        received = T0 + timedelta(minutes=n)
        proj = apply(proj, data, key=_key(data, event_key, time, received), now=received) or proj
    assert proj.state is not None
    return proj.state.status


def test_events_without_sequence_or_time_rank_by_arrival_not_by_id() -> None:
    # CloudEvents' time is optional: "evt-10" sorts before "evt-9" as text, yet came later.
    assert (
        _status_after(
            [
                ("/crm|evt-9", None, CaseEventData(case_id="c1", status="engineer on the way")),
                ("/crm|evt-10", None, CaseEventData(case_id="c1", status="resolved")),
            ]
        )
        == "resolved"
    )


def test_sequences_rank_only_events_of_their_own_source() -> None:
    # A time-ranked event does not outrank later events of the same source that carry
    # sequences (1, 2 are not seconds since 1970).
    assert (
        _status_after(
            [
                ("/crm|open", T0, CaseEventData(case_id="c1", status="open")),
                ("/crm|s1", T0 + timedelta(hours=2), _seq(1, "engineer booked")),
                ("/crm|s2", T0 + timedelta(hours=3), _seq(2, "resolved")),
            ]
        )
        == "resolved"
    )
    # One source's sequence 900 says nothing about another source's sequence 3: time decides.
    assert (
        _status_after(
            [
                ("/crm|a1", T0, _seq(900, "open")),
                ("/field|b1", T0 + timedelta(hours=2), _seq(3, "engineer on site")),
            ]
        )
        == "engineer on site"
    )
    assert (
        _status_after(
            [
                ("/field|a", T0, CaseEventData(case_id="c1", status="engineer booked")),
                ("/crm|b", T0 + timedelta(hours=1), _seq(7, "cancelled")),
            ]
        )
        == "cancelled"
    )


def test_large_sequences_compare_exactly() -> None:
    big = 1_732_435_200_000_000_001  # nanosecond stamps differ beyond a float's precision
    assert (
        _status_after(
            [
                ("/crm|new", T0, _seq(big + 1, "resolved")),
                ("/crm|old", T0, _seq(big, "open")),  # arrives late
            ]
        )
        == "resolved"
    )


def test_stored_keys_round_trip_and_older_stored_keys_still_rank() -> None:
    key = _key(_seq(2**62, "open"), "/crm|e1", T0)
    assert OrderKey.from_doc(key.to_doc()) == key
    # Keys stored as [rank, event key] before: an integral rank may have been a sequence.
    legacy = OrderKey.from_doc([7.0, "/crm|e7"])
    assert _key(_seq(8, "x"), "/crm|e8", T0).newer_than(legacy)
    assert not _key(_seq(6, "x"), "/crm|e6", T0).newer_than(legacy)
    assert _key(CaseEventData(case_id="c1"), "/field|f", T0).newer_than(legacy)


@st.composite
def two_source_histories(draw: st.DrawFn) -> list[tuple[str, datetime, CaseEventData]]:
    """Events of two sources in the order they happened; each source numbers some of its
    events (increasing), the others carry only their time."""
    n = draw(st.integers(min_value=1, max_value=8))
    counters = {"/crm": draw(st.integers(0, 10**12)), "/field": draw(st.integers(0, 5))}
    out = []
    for i in range(n):
        source = draw(st.sampled_from(sorted(counters)))
        sequence = None
        if draw(st.booleans()):
            counters[source] += draw(st.integers(1, 3))
            sequence = counters[source]
        data = CaseEventData(
            case_id="c1",
            sequence=sequence,
            status=draw(statuses),
            summary=draw(st.sampled_from(["s1", "s2", None])),
        )
        out.append((f"{source}|e{i}", T0 + timedelta(seconds=i), data))
    return out


@settings(max_examples=200, deadline=None)
@given(two_source_histories(), st.randoms(use_true_random=False))
def test_two_sources_with_and_without_sequences_converge(events: list, rnd) -> None:  # type: ignore[no-untyped-def]
    shuffled = list(events)
    rnd.shuffle(shuffled)
    final = _final(shuffled)
    assert final == _final(events)
    # Each source's numbers agree with the times, so the newest word on each field wins.
    for name in ("status", "summary"):
        said = [getattr(data, name) for _, _, data in events if getattr(data, name) is not None]
        assert (final or {}).get(name) == (said[-1] if said else None)


def test_a_late_event_fills_what_no_newer_event_set_and_is_marked_late() -> None:
    booked = CaseEventData(
        case_id="c1",
        sequence=2,
        status="engineer booked",
        appointment=Appointment(starts_at=T0 + timedelta(days=1)),
    )
    opened, resolved = _seq(1, "open"), _seq(3, "resolved")
    p1 = apply(Projection(None, {}), opened, key=_key(opened, "/crm|e1", T0), now=T0)
    assert p1 is not None and not p1.late
    in_order = apply(p1, booked, key=_key(booked, "/crm|e2", T0), now=T0)
    assert in_order is not None and in_order.state_changed and not in_order.late
    p2 = apply(p1, resolved, key=_key(resolved, "/crm|e3", T0), now=T0)
    assert p2 is not None and not p2.late
    p3 = apply(p2, booked, key=_key(booked, "/crm|e2", T0), now=T0)
    assert p3 is not None and p3.state is not None and p3.state_changed
    assert p3.state.status == "resolved" and p3.state.appointment is not None
    assert p3.late  # the case already had newer news: nothing should announce the booking


def _seq(sequence: int, status: str) -> CaseEventData:
    return CaseEventData(case_id="c1", sequence=sequence, status=status)


def test_an_attribute_that_changes_type_but_compares_equal_is_a_change() -> None:
    # Python takes 1 == True and 0 == 0.0; a sender that turns a count into a flag (or a whole
    # number into a decimal) has changed the case, and consumers see the new JSON type.
    proj = Projection(None, {})
    for i, attributes in enumerate(
        [{"vip": 1, "flag": 0, "ratio": 1}, {"vip": True, "flag": False, "ratio": 1.0}]
    ):
        data = CaseEventData(case_id="c1", customer_ids=["a"], attributes=attributes)
        nxt = apply(proj, data, key=_key(data, f"src|e{i}", T0 + timedelta(seconds=i)), now=T0)
        assert nxt is not None and nxt.state_changed and nxt.state is not None
        proj = nxt
    assert proj.state is not None and proj.state.version == 2
    attributes = proj.state.attributes
    assert attributes["vip"] is True and attributes["flag"] is False
    assert type(attributes["ratio"]) is float
