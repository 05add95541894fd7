"""Project business events into a versioned case state that never regresses.

Each field remembers the order key of the event that last set it; an event only overwrites
fields it is newer for. So any arrival order of the same events converges to the same state,
and a late event is kept in the timeline without undoing newer news.

Which of two events is newer: a source's sequence numbers are its own, so they decide only
between two events of that source that both carry one (exact integers). Any other pair is
decided by event time, or, for an event without one, by when ingest first received it; the
event key (source|id) breaks ties. Nothing falls back to a constant that would let ids decide.
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


@dataclass(frozen=True, slots=True)
class OrderKey:
    """How new an event is. Stored per field, as a document (`to_doc`)."""

    source: str
    sequence: int | None
    time: float  # event time, else when ingest received it (POSIX seconds)
    event: str  # the event key (source|id): breaks ties

    def newer_than(self, other: OrderKey) -> bool:
        """Whether this event is newer news than `other` (False for the same event)."""
        if self.source == other.source and self.sequence is not None and other.sequence is not None:
            return (self.sequence, self.event) > (other.sequence, other.event)
        return (self.time, self.event) > (other.time, other.event)

    def to_doc(self) -> dict[str, Any]:
        """The stored form (a sequence stays an integer: ingest accepts only 64-bit ones)."""
        return {"source": self.source, "seq": self.sequence, "time": self.time, "event": self.event}

    @classmethod
    def from_doc(cls, doc: Any) -> OrderKey:
        """A stored key; also the older [rank, event key] form, whose rank was the sequence
        when there was one, else the event time (0.0 without either)."""
        if isinstance(doc, dict):
            seq = doc.get("seq")
            return cls(
                str(doc["source"]),
                None if seq is None else int(seq),
                float(doc["time"]),
                doc["event"],
            )
        rank, event = float(doc[0]), str(doc[1])
        # An integral rank may have been a sequence: keep comparing the source's sequences.
        return cls(event.partition("|")[0], int(rank) if rank.is_integer() else None, rank, event)


def order_key(
    data: CaseEventData,
    *,
    source: str,
    time: datetime | None,
    received: datetime,
    event_key: str,
) -> OrderKey:
    """How new an event is: its source's sequence (for that source's other events), and its
    time, or when ingest received it (for everything else)."""
    return OrderKey(source, data.sequence, (time or received).timestamp(), event_key)


def _same(held: Any, value: Any) -> bool:
    """Whether an attribute already holds this value: of the same type, since Python takes
    True == 1 and 0 == 0.0, yet a flag that became a count (or back) is a change to publish."""
    return type(held) is type(value) and held == value


def is_late(current: Projection, key: OrderKey) -> bool:
    """Whether the case has already taken newer news than this event, on any field."""
    return any(held.newer_than(key) for held in current.field_order.values())


@dataclass(frozen=True, slots=True)
class Projection:
    """A case's state plus the bookkeeping that keeps it from regressing."""

    state: CaseState | None
    field_order: dict[str, OrderKey]
    state_changed: bool = False
    # The event was older than news the case already had: its change is published, marked
    # late, so nothing reacts to it as if it had just happened.
    late: bool = False


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
    A late event still fills fields no newer event set; the result says it was late.
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
        if name in order and not key.newer_than(order[name]):
            continue
        order[name] = key
        if base.get(name) != value:
            base[name] = value
            changed = True
    attrs = dict(base.get("attributes") or {})
    for name, value in data.attributes.items():
        slot = f"attributes/{name}"
        if slot in order and not key.newer_than(order[slot]):
            continue
        order[slot] = key
        if not _same(attrs.get(name), value):
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
    return Projection(
        CaseState.model_validate(base), order, state_changed=True, late=is_late(current, key)
    )
