"""Which case state the dispatcher renders from: the newest of the request's and its local view's.

A request carrying the case version it names decides at once (the view, one consumer hop
behind, is read once for anything newer); only a request naming a version it does not carry
waits for the view to catch up.
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
