"""In-memory stores and producer for deciding whole requests with the real `Dispatcher.handle`.

Same method names and meanings as `herald_dispatcher.adapters.store` and the event producer;
nothing is persisted. For unit tests of decisions that need no Kafka or database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from herald_contracts import CaseState, ContactPreferences, ContactRequest
from herald_dispatcher.adapters.store import CapHistory, LastContent, RequestState
from herald_dispatcher.config import Settings
from herald_dispatcher.policy import Dispatcher
from herald_kit.caps import WEEK


class Views:
    """The customer and case views."""

    def __init__(
        self, prefs: dict[str, ContactPreferences], cases: dict[str, CaseState] | None = None
    ) -> None:
        self.prefs, self.cases = prefs, cases or {}

    async def contact(self, customer_id: str) -> ContactPreferences | None:
        return self.prefs.get(customer_id)

    async def case(self, case_id: str) -> CaseState | None:
        return self.cases.get(case_id)


class Decisions:
    """Claims and recorded decisions."""

    def __init__(self) -> None:
        self.claims: set[str] = set()
        self.recorded: dict[str, dict[str, Any]] = {}

    async def claim(self, key: str, *, now: datetime) -> dict[str, Any] | None:
        if key not in self.claims:
            self.claims.add(key)
            return None
        return self.recorded.get(key)  # None too for a claim without a decision (a crash)

    async def record(self, decision: dict[str, Any]) -> None:
        self.recorded.setdefault(decision["_id"], decision)


class Ledger:
    """Request states, cap histories, content, attempts and outcomes."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, list[dict[str, Any]]] = {}
        self.contents: dict[str, dict[str, Any]] = {}
        self.attempts: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}

    async def request_state(self, key: str, order: int) -> RequestState:
        doc = self.states.get(key)
        if doc is None:
            return RequestState(key, order=order, told=0, stored=None)
        stored = (doc["order"], doc["told"])
        return RequestState(
            key, order=max(order, doc["order"]), told=doc["told"], stored=stored, told_by=doc["by"]
        )

    async def save_request_state(
        self, state: RequestState, *, told: int = 0, by: str | None = None
    ) -> None:
        if told > state.told:
            state.told, state.told_by = told, by
        self.states[state.key] = {"order": state.order, "told": state.told, "by": state.told_by}
        state.stored = (state.order, state.told)

    async def cap_history(self, customer_id: str, priority: str) -> CapHistory:
        key = f"{customer_id}|{priority}"
        return CapHistory(key, list(self.contacts.get(key, [])), stored=key in self.contacts)

    async def note_contact(self, request_id: str, history: CapHistory, at: datetime) -> None:
        recent = [c for c in history.recent if c["at"] > at - WEEK]
        if all(c["r"] != request_id for c in recent):
            self.contacts[history.key] = [*recent, {"r": request_id, "at": at}]

    async def last_content(self, key: str) -> LastContent:
        d = self.contents.get(key)
        if d is None:
            return LastContent(key, None, None, None)
        return LastContent(key, d["h"], d["m"], d["at"], d["c"], d["t"])

    async def note_content(
        self, last: LastContent, digest: str, mid: str, at: datetime, request: ContactRequest
    ) -> None:
        self.contents[last.key] = {
            "h": digest,
            "m": mid,
            "at": at,
            "c": request.campaign.id,
            "t": request.trigger_key,
        }

    async def forget_content(self, key: str, mid: str) -> None:
        if self.contents.get(key, {}).get("m") == mid:
            del self.contents[key]

    async def note_attempt(self, doc: dict[str, Any]) -> None:
        self.attempts.setdefault(doc["_id"], doc)

    async def attempt(self, mid: str) -> dict[str, Any] | None:
        return self.attempts.get(mid)

    async def open_attempts(self, customer_id: str, case_id: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.attempts.values()
            if a["customer_id"] == customer_id and a["case_id"] == case_id
        ]

    async def mark(self, request_id: str, flag: str, *, at: datetime) -> bool:
        doc = self.outcomes.setdefault(request_id, {"at": at})
        new = not doc.get(flag)
        doc[flag] = True
        return new

    async def outcome(self, request_id: str) -> dict[str, Any]:
        return self.outcomes.get(request_id, {})


class Producer:
    """Every published event, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def publish(
        self, event_type: Any, data: Any, *, key: str | None = None, **_: Any
    ) -> None:
        self.sent.append((event_type.type, data))

    def of(self, kind: type) -> list[Any]:
        """The published events of one model."""
        return [data for _, data in self.sent if isinstance(data, kind)]


@dataclass
class Clock:
    """A clock the test moves."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Rig:
    """A dispatcher over in-memory stores, and the stores."""

    dispatcher: Dispatcher
    views: Views
    decisions: Decisions
    ledger: Ledger
    producer: Producer
    clock: Clock


def rig(prefs: ContactPreferences, now: datetime, **settings: Any) -> Rig:
    """A dispatcher that knows one customer, at `now` (no waiting for views)."""
    views, decisions, ledger, producer = (
        Views({prefs.customer_id: prefs}),
        Decisions(),
        Ledger(),
        Producer(),
    )
    clock = Clock(now)
    config = Settings(view_wait_seconds=0, case_wait_seconds=0, **settings)
    dispatcher = Dispatcher(views, decisions, ledger, producer, config, clock=clock)  # type: ignore[arg-type]
    return Rig(dispatcher, views, decisions, ledger, producer, clock)
