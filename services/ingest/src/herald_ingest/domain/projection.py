"""Project business events into a versioned case state that never regresses.

Each field remembers the order key of the event that last set it; an event only overwrites
fields it is newer for. So any arrival order of the same events converges to the same state,
and a late event is kept in the timeline without undoing newer news.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from herald_contracts import CaseEventData, CaseState

PROJECTED_FIELDS = (
    "status",
    "summary",
    "next_step",
    "eta",
    "assigned_team",
    "assigned_engineer",
    "appointment",
)
# Stored order keys are [rank, tiebreak]; lists compare element by element.
OrderKey = list[Any]


def order_key(data: CaseEventData, *, time: datetime | None, event_key: str) -> OrderKey:
    """How new an event is: the source's sequence when given, else its time; id breaks ties."""
    if data.sequence is not None:
        return [float(data.sequence), event_key]
    return [time.timestamp() if time else 0.0, event_key]


@dataclass(frozen=True, slots=True)
class Projection:
    """A case's state plus the bookkeeping that keeps it from regressing."""

    state: CaseState | None
    field_order: dict[str, OrderKey]
    state_changed: bool = False


def apply(
    current: Projection,
    data: CaseEventData,
    *,
    key: OrderKey,
    now: datetime,
) -> Projection | None:
    """The projection after the event, or None when the event changes nothing at all.

    An event can leave the state as it is yet still be the newest word on a field; its order
    key must be kept (state_changed False) or an older event could later overwrite the field.
    """
    base: dict[str, Any] = (
        current.state.model_dump() if current.state else {"case_id": data.case_id, "version": 0}
    )
    order = dict(current.field_order)
    changed = False
    incoming = data.model_dump()
    for name in PROJECTED_FIELDS:
        value = incoming.get(name)
        if value is None:
            continue
        if name in order and order[name] >= key:
            continue
        order[name] = key
        if base.get(name) != value:
            base[name] = value
            changed = True
    attrs = dict(base.get("attributes") or {})
    for name, value in data.attributes.items():
        slot = f"attributes/{name}"
        if slot in order and order[slot] >= key:
            continue
        order[slot] = key
        if attrs.get(name) != value:
            attrs[name] = value
            changed = True
    customers = list(base.get("customer_ids") or [])
    for cid in data.customer_ids:
        if cid not in customers:
            customers.append(cid)
            changed = True
    if not changed:
        if order == current.field_order:
            return None
        return Projection(current.state, order, state_changed=False)
    base.update(
        attributes=attrs,
        customer_ids=customers,
        version=int(base["version"]) + 1,
        updated_at=now,
    )
    return Projection(CaseState.model_validate(base), order, state_changed=True)
