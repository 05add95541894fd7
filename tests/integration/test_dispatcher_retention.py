"""The dispatcher forgets per-message rows past their retention, on the real database."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from herald_dispatcher.adapters.store import Decisions, Ledger
from herald_dispatcher.config import Settings
from herald_dispatcher.retention import Retention, forget_before

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
DAY = timedelta(days=1)


async def test_a_sweep_forgets_old_rows_and_keeps_what_can_still_be_asked_for(
    mongo: Any, db_name: Callable[[str], str]
) -> None:
    db = mongo[db_name("dispatcher")]
    decisions, ledger = Decisions(db), Ledger(db)
    settings = Settings(
        ledger_retention_seconds=int((30 * DAY).total_seconds()),
        decision_retention_seconds=int((90 * DAY).total_seconds()),
    )
    ages = {"young": 2 * DAY, "month": 31 * DAY, "quarter": 91 * DAY}
    for name, age in ages.items():
        at = NOW - age
        await decisions.claim(f"req-{name}:1:-", now=at)
        await decisions.record({"_id": f"req-{name}:1:-", "outcome": "sent", "at": at})
        await ledger.note_attempt({"_id": f"msg-{name}", "request_id": f"req-{name}", "at": at})
        await db["last_contents"].insert_one({"_id": f"cust|sms|{name}", "h": "x", "at": at})

    forgotten = await Retention(decisions, ledger, settings, clock=lambda: NOW).sweep()

    assert forgotten == {"request_claims": 2, "attempts": 2, "last_contents": 2, "decisions": 1}
    assert [d["_id"] async for d in db["attempts"].find({}, {"_id": 1})] == ["msg-young"]
    assert [d["_id"] async for d in db["last_contents"].find({}, {"_id": 1})] == ["cust|sms|young"]
    kept = sorted([d["_id"] async for d in db["decisions"].find({}, {"_id": 1})])
    assert kept == ["req-month:1:-", "req-young:1:-"]
    # A redelivered recent request is still refused: its claim and its decision are there.
    previous = await decisions.claim("req-young:1:-", now=NOW)
    assert previous is not None and previous["outcome"] == "sent"
    assert await ledger.attempt("msg-young") is not None
    # A second sweep finds nothing more.
    again = await Retention(decisions, ledger, settings, clock=lambda: NOW).sweep()
    assert set(again.values()) == {0}


async def test_forgetting_goes_a_batch_at_a_time_until_nothing_old_is_left(
    mongo: Any, db_name: Callable[[str], str]
) -> None:
    rows = mongo[db_name("dispatcher")]["attempts"]
    await rows.insert_many([{"_id": f"old-{i}", "at": NOW - 40 * DAY} for i in range(7)])
    await rows.insert_many([{"_id": f"new-{i}", "at": NOW} for i in range(2)])
    assert await forget_before(rows, NOW - 30 * DAY, batch=3) == 7
    assert sorted([d["_id"] async for d in rows.find({}, {"_id": 1})]) == ["new-0", "new-1"]


def test_decisions_are_kept_at_least_as_long_as_the_claims_they_settle() -> None:
    with pytest.raises(ValidationError, match="decided \\(and sent\\) again"):
        Settings(
            ledger_retention_seconds=int((30 * DAY).total_seconds()),
            decision_retention_seconds=int((10 * DAY).total_seconds()),
        )
    with pytest.raises(ValidationError, match="ledger_retention_seconds"):
        Settings(ledger_retention_seconds=3600)  # shorter than the topics keep a request
