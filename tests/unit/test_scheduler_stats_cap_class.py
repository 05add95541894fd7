"""The stats consumer notes a sent contact in contact_history (what dry runs predict caps from)
with its campaign's priority and `counts_towards_cap`, as the campaign's current version says."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from herald_contracts import DeliveryStatus, utc_now
from herald_kit import NotFound
from herald_scheduler.messaging.stats import CAP_CLASS_SECONDS, StatsConsumer


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Campaigns:
    """The campaign repository's `get`: the current version, or NotFound."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] | None = None
        self.reads = 0

    def save(self, version: int, priority: str, counts_towards_cap: bool) -> None:
        limits = {"counts_towards_cap": counts_towards_cap}
        self.doc = {
            "_id": "c1",
            "version": version,
            "status": "active",
            "definition": {"priority": priority, "limits": limits},
        }

    async def get(self, campaign_id: str) -> dict[str, Any]:
        self.reads += 1
        if self.doc is None:
            raise NotFound(f"campaign {campaign_id} not found")
        return self.doc


class History:
    def __init__(self) -> None:
        self.noted: list[tuple[str, str]] = []

    async def note(self, *, customer_id: str, priority: str, request_id: str, at: datetime) -> None:
        self.noted.append((request_id, priority))


def sent(request_id: str) -> DeliveryStatus:
    return DeliveryStatus(
        message_id=f"m-{request_id}",
        request_id=request_id,
        campaign_id="c1",
        customer_id="cu1",
        case_id="k1",
        status="sent",
        channel="sms",
        at=utc_now(),
    )


def consumer(campaigns: Campaigns, history: History, clock: Clock) -> StatsConsumer:
    return StatsConsumer(
        None,  # type: ignore[arg-type]  # statuses are noted, not counted, here
        "",
        campaigns=campaigns,  # type: ignore[arg-type]
        history=history,  # type: ignore[arg-type]
        clock=clock,
    )


async def test_a_new_version_s_priority_and_cap_contribution_apply_to_later_contacts() -> None:
    campaigns, history, clock = Campaigns(), History(), Clock()
    campaigns.save(1, "marketing", counts_towards_cap=False)
    stats = consumer(campaigns, history, clock)
    await stats._note_contact(sent("r1"))  # version 1 does not count towards the caps
    # PUT /campaigns/c1 saves version 2: it counts now, as a service message.
    campaigns.save(2, "service", counts_towards_cap=True)
    clock.t += CAP_CLASS_SECONDS
    await stats._note_contact(sent("r2"))
    # And version 3 stops counting again.
    campaigns.save(3, "service", counts_towards_cap=False)
    clock.t += CAP_CLASS_SECONDS
    await stats._note_contact(sent("r3"))
    assert history.noted == [("r2", "service")]


async def test_a_campaign_not_found_at_first_is_read_again_and_its_contacts_count() -> None:
    campaigns, history, clock = Campaigns(), History(), Clock()
    stats = consumer(campaigns, history, clock)
    await stats._note_contact(sent("r1"))  # the campaign is not there (yet)
    campaigns.save(1, "marketing", counts_towards_cap=True)
    await stats._note_contact(sent("r2"))
    assert history.noted == [("r2", "marketing")]


async def test_statuses_within_the_lifetime_read_the_campaign_once() -> None:
    campaigns, history, clock = Campaigns(), History(), Clock()
    campaigns.save(1, "marketing", counts_towards_cap=True)
    stats = consumer(campaigns, history, clock)
    for i in range(5):
        await stats._note_contact(sent(f"r{i}"))
        clock.t += CAP_CLASS_SECONDS / 10
    assert campaigns.reads == 1
    assert len(history.noted) == 5
