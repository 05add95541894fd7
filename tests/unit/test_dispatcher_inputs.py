"""Which case state the dispatcher renders from: the newest of the request's and its local view's.

A request carrying the case version it names decides at once (the view, one consumer hop
behind, is read once for anything newer); only a request naming a version it does not carry
waits for the view to catch up. The reads a decision may need start together with its claim.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from herald_contracts import CampaignRef, CaseState, ContactRequest, MessageTemplate
from herald_dispatcher.config import Settings
from herald_dispatcher.policy import Dispatcher

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
CAMPAIGN = CampaignRef(
    id="c", version=1, name="n", topic="t", messages={"sms": {"en": MessageTemplate(body="hi")}}
)


def _case(version: int) -> CaseState:
    return CaseState(
        case_id="case-1",
        version=version,
        customer_ids=["cust-1"],
        status=f"v{version}",
        updated_at=NOW,
    )


def _request(carried: CaseState | None, names: int) -> ContactRequest:
    return ContactRequest(
        request_id="r",
        campaign=CAMPAIGN,
        customer_id="cust-1",
        case_id="case-1",
        case_version=names,
        case_state=carried,
        trigger_key=f"case-1:{names}",
        requested_at=NOW,
    )


class View:
    """The local case view: holds `held`, or `later` from the `after`-th read on."""

    def __init__(self, held: CaseState | None, later: CaseState | None = None, after: int = 0):
        self.held, self.later, self.after, self.reads = held, later, after, 0

    async def case(self, case_id: str) -> CaseState | None:
        self.reads += 1
        if self.later is not None and self.reads >= self.after:
            return self.later
        return self.held


def _latest(view: View, request: ContactRequest) -> CaseState | None:
    dispatcher = Dispatcher(view, None, None, None, Settings(case_wait_seconds=30))  # type: ignore[arg-type]
    got: Any = asyncio.run(dispatcher._latest_case(request))
    return got


def test_request_carrying_its_version_reads_the_view_once_without_waiting() -> None:
    view = View(held=None)
    assert _latest(view, _request(_case(3), names=3)) == _case(3)
    # Polling until the view held version 3 would read it every 50 ms for 30 s.
    assert view.reads == 1


def test_a_newer_state_in_the_view_wins_over_the_carried_one() -> None:
    view = View(held=_case(5))
    assert _latest(view, _request(_case(3), names=3)) == _case(5)
    assert view.reads == 1


def test_an_older_view_never_replaces_the_carried_state() -> None:
    view = View(held=_case(2))
    assert _latest(view, _request(_case(3), names=3)) == _case(3)


def test_request_naming_a_version_it_does_not_carry_waits_for_the_view() -> None:
    view = View(held=_case(1), later=_case(2), after=3)
    assert _latest(view, _request(_case(1), names=2)) == _case(2)
    assert view.reads == 3


class Claims:
    """The decisions store: a claim that answers only when released."""

    def __init__(self, previous: dict[str, Any] | None) -> None:
        self.previous = previous
        self.release = asyncio.Event()
        self.recorded: list[dict[str, Any]] = []

    async def claim(self, key: str, *, now: datetime) -> dict[str, Any] | None:
        await self.release.wait()
        return self.previous

    async def record(self, decision: dict[str, Any]) -> None:
        self.recorded.append(decision)


class Ledger:
    """Notes which reads were asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def request_state(self, key: str, order: int) -> Any:
        self.asked.append("request_state")
        await asyncio.sleep(3600)

    async def cap_history(self, customer_id: str, priority: str) -> Any:
        self.asked.append("cap_history")
        await asyncio.sleep(3600)


class NoContacts(View):
    async def contact(self, customer_id: str) -> None:
        return None


def test_a_decisions_reads_go_out_with_its_claim_and_a_duplicate_drops_them() -> None:
    async def run() -> tuple[Any, Ledger, Claims]:
        claims, ledger = Claims(previous={"outcome": "sent"}), Ledger()
        settings = Settings(case_wait_seconds=0, view_wait_seconds=0)
        dispatcher = Dispatcher(NoContacts(held=None), claims, ledger, None, settings)  # type: ignore[arg-type]
        task = asyncio.create_task(dispatcher.handle(_request(_case(3), names=3)))
        for _ in range(10):
            await asyncio.sleep(0)
        # Before the claim answers, the ledger reads of the decision are already under way.
        assert sorted(ledger.asked) == ["cap_history", "request_state"]
        claims.release.set()
        return await task, ledger, claims

    decision, _, claims = asyncio.run(run())
    # A redelivered request is ignored, even for a customer the view does not know (any more).
    assert (decision.outcome, decision.rule) == ("ignored", "duplicate")
    assert [d["rule"] for d in claims.recorded] == ["duplicate"]
