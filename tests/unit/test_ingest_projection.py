"""Case projection: any arrival order of the same events converges; late events never regress."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from herald_contracts import CaseEventData
from herald_ingest.domain.projection import Projection, apply, order_key

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
statuses = st.sampled_from(["open", "delayed", "engineer booked", "resolved", None])


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
        nxt = apply(proj, data, key=order_key(data, time=time, event_key=key), now=T0)
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
    p1 = apply(Projection(None, {}), new, key=order_key(new, time=T0, event_key="s|2"), now=T0)
    assert p1 is not None
    p2 = apply(p1, old, key=order_key(old, time=T0, event_key="s|1"), now=T0)
    assert p2 is not None and p2.state is not None
    assert p2.state.status == "engineer 16:00"  # not regressed
    assert p2.state.summary == "boiler"  # a field nobody newer set is still taken
    assert p2.state.version == 2


def test_replaying_an_event_changes_nothing() -> None:
    ev = CaseEventData(case_id="c1", status="open")
    key = order_key(ev, time=T0, event_key="s|1")
    p1 = apply(Projection(None, {}), ev, key=key, now=T0)
    assert p1 is not None
    assert apply(p1, ev, key=key, now=T0) is None
