"""Each service forgets its per-message rows past their retention, on the real database.

FerretDB v1 has no TTL index, so without these sweeps every claim, ledger row and statistics
guard would stay for ever (docs/operations.md#data-retention).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from herald_contracts import utc_now
from herald_dispatcher.config import Settings as DispatcherSettings
from herald_kit import forget_before
from support import eventually, service_settings

DAY = timedelta(days=1)
# service package -> the collections of a row per request or message it must forget
PER_MESSAGE = {
    "herald_dispatcher": ["request_claims", "attempts", "request_outcomes", "last_contents"],
    "herald_sms_sender": ["send_ledger"],
    "herald_voice_sender": ["call_ledger"],
    "herald_email_sender": ["send_ledger", "send_outcomes"],
    "herald_scheduler": ["stats_seen", "stats_messages"],
}
FAKE_TWILIO = {"twilio_account_sid": "AC" + "0" * 32, "twilio_auth_token": "not-a-secret"}


def _sweeping_often(
    settings_type: Any, infra: dict[str, str], namespace: str, database: str, **extra: Any
) -> Any:
    """A service's settings on the test stack, sweeping old rows every 0.2 s."""
    return service_settings(
        settings_type, infra, namespace, database, retention_interval_seconds=0.2, **extra
    )


@pytest.mark.parametrize("package", sorted(PER_MESSAGE))
async def test_a_service_forgets_rows_past_the_ledger_retention_and_keeps_the_rest(
    package: str,
    infra: dict[str, str],
    namespace: str,
    mongo: Any,
    db_name: Callable[[str], str],
) -> None:
    config = importlib.import_module(f"{package}.config")
    app_module = importlib.import_module(f"{package}.app")
    database = db_name(package)
    twilio = package in ("herald_sms_sender", "herald_voice_sender")
    settings = _sweeping_often(
        config.Settings, infra, namespace, database, **(FAKE_TWILIO if twilio else {})
    )
    db = mongo[database]
    now = utc_now()
    for name in PER_MESSAGE[package]:
        await db[name].insert_many(
            [
                {"_id": "past", "at": now - 31 * DAY},
                {"_id": "recent", "at": now - 29 * DAY},
                {"_id": "undated"},  # rows from before `at` was written are kept
            ]
        )
    app = app_module.create_app(settings)
    async with app.router.lifespan_context(app):

        async def forgotten() -> bool:
            for name in PER_MESSAGE[package]:
                if await db[name].find_one({"_id": "past"}) is not None:
                    return False
            return True

        await eventually(forgotten, within=20)
    for name in PER_MESSAGE[package]:
        assert await _ids(db[name]) == ["recent", "undated"], name
        # A sweep finds the old rows by an index on MongoDB, not by reading a month of rows.
        assert await _indexed_by_at(db[name]), name


async def _indexed_by_at(rows: Any) -> bool:
    keys = [list(ix["key"].items()) async for ix in await rows.list_indexes()]
    return [("at", 1)] in keys


async def test_decisions_are_forgotten_after_their_own_longer_retention(
    infra: dict[str, str], namespace: str, mongo: Any, db_name: Callable[[str], str]
) -> None:
    from herald_dispatcher.app import create_app

    database = db_name("dispatcher")
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    settings = _sweeping_often(DispatcherSettings, infra, namespace, database)
    decisions = mongo[database]["decisions"]
    await decisions.insert_many(
        [{"_id": "quarter", "at": now - 91 * DAY}, {"_id": "month", "at": now - 31 * DAY}]
    )
    app = create_app(settings, clock=lambda: now)  # the dispatcher's own clock decides
    async with app.router.lifespan_context(app):
        await eventually(lambda: _gone(decisions, "quarter"), within=20)
    assert await _ids(decisions) == ["month"]
    assert await _indexed_by_at(decisions)


async def test_idempotency_keys_are_replayed_for_a_day_then_forgotten(
    infra: dict[str, str], namespace: str, mongo: Any, db_name: Callable[[str], str]
) -> None:
    from herald_preferences.app import create_app
    from herald_preferences.config import Settings as PreferencesSettings

    database = db_name("preferences")
    settings = _sweeping_often(PreferencesSettings, infra, namespace, database)
    # Each holds the response written back, the contact with its phone number among it.
    keys = mongo[database]["idempotency"]
    now = utc_now()
    await keys.insert_many(
        [
            {"_id": "ops:yesterday", "state": "done", "at": now - timedelta(hours=25)},
            {"_id": "ops:this-morning", "state": "done", "at": now - timedelta(hours=23)},
        ]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await eventually(lambda: _gone(keys, "ops:yesterday"), within=20)
    assert await _ids(keys) == ["ops:this-morning"]


async def _gone(rows: Any, key: str) -> bool:
    return await rows.find_one({"_id": key}) is None


async def test_forgetting_goes_a_batch_at_a_time_until_nothing_old_is_left(
    mongo: Any, db_name: Callable[[str], str]
) -> None:
    now = utc_now()
    rows = mongo[db_name("dispatcher")]["attempts"]
    await rows.insert_many([{"_id": f"old-{i}", "at": now - 40 * DAY} for i in range(7)])
    await rows.insert_many([{"_id": f"new-{i}", "at": now} for i in range(2)])
    counted = _forgotten("attempts")
    assert await forget_before(rows, now - 30 * DAY, batch=3) == 7
    assert _forgotten("attempts") - counted == 7  # herald_rows_forgotten_total, for the SRE
    assert await _ids(rows) == ["new-0", "new-1"]


def test_decisions_are_kept_at_least_as_long_as_the_claims_they_settle() -> None:
    with pytest.raises(ValidationError, match="decided \\(and sent\\) again"):
        DispatcherSettings(
            ledger_retention_seconds=int((30 * DAY).total_seconds()),
            decision_retention_seconds=int((20 * DAY).total_seconds()),
        )
    with pytest.raises(ValidationError, match="ledger_retention_seconds"):
        # 14 days: a topic may still hold a record that old (7 days, and 7 until a segment rolls)
        DispatcherSettings(ledger_retention_seconds=int((14 * DAY).total_seconds()))


def test_a_repeat_window_longer_than_the_ledger_retention_is_refused() -> None:
    # The last content is swept with the ledger's rows: a 45-day window over 30 days of rows
    # would let the same words through again after day 30.
    with pytest.raises(ValidationError, match="repeat_window_seconds must be at most"):
        DispatcherSettings(repeat_window_seconds=(45 * DAY).total_seconds())
    with pytest.raises(ValidationError, match="repeat_window_seconds"):
        DispatcherSettings(
            ledger_retention_seconds=int((20 * DAY).total_seconds()),
            repeat_window_seconds=(21 * DAY).total_seconds(),
        )
    within = DispatcherSettings(
        ledger_retention_seconds=int((20 * DAY).total_seconds()),
        repeat_window_seconds=(20 * DAY).total_seconds(),
    )
    assert within.repeat_window_seconds == within.ledger_retention_seconds


def test_ingest_remembers_seen_events_at_least_as_long_as_a_topic_can_replay_them() -> None:
    from herald_ingest.config import Settings as IngestSettings
    from herald_kit import REPLAY_WINDOW

    window = int(REPLAY_WINDOW.total_seconds())
    # A day: an event read again from the topic a week later would be applied as new.
    for short in (60, 86_400, window - 1):
        with pytest.raises(ValidationError, match="dedupe_retention_seconds"):
            IngestSettings(dedupe_retention_seconds=short)
    assert IngestSettings(dedupe_retention_seconds=window).dedupe_retention_seconds == window


async def test_settled_timers_and_their_keys_go_after_the_replay_window(
    mongo: Any, db_name: Callable[[str], str]
) -> None:
    from herald_kit import REPLAY_WINDOW
    from herald_scheduler.adapters.timers import TimerRepository

    now = utc_now()
    db = mongo[db_name("scheduler")]
    timers = TimerRepository(db)
    gone, kept = now - REPLAY_WINDOW - DAY, now - REPLAY_WINDOW + DAY
    for timer_id, due_at in [("fired-long-ago", gone), ("cancelled-long-ago", gone)]:
        await timers.schedule(timer_id=timer_id, key=timer_id, due_at=due_at, request={}, now=now)
    # A key whose later timer is recent stays with it.
    await timers.schedule(timer_id="first", key="twice", due_at=gone, request={}, now=now)
    await timers.schedule(timer_id="again", key="twice", due_at=kept, request={}, now=now)
    settle = [("fired-long-ago", "fired"), ("first", "fired"), ("again", "fired")]
    for timer_id, state in [*settle, ("cancelled-long-ago", "cancelled")]:
        await db["timers"].update_one({"_id": timer_id}, {"$set": {"state": state}})

    assert await timers.sweep(before=now - REPLAY_WINDOW) == 3
    assert await _ids(db["timers"]) == ["again"]
    assert await _ids(db["timer_keys"]) == ["twice"]

    # Due that long ago and never fired (a scheduler stopped that long): the timer stays, and so
    # does its key, until it has fired, since a cancel may still come for it; the keys of
    # settled timers go as usual.
    await timers.schedule(timer_id="late", key="late", due_at=gone, request={}, now=now)
    await db["timers"].update_one({"_id": "again"}, {"$set": {"due_at": gone}})
    await db["timer_keys"].update_one({"_id": "twice"}, {"$set": {"due": gone}})
    assert await timers.sweep(before=now - REPLAY_WINDOW) == 1
    assert await _ids(db["timer_keys"]) == ["late"]
    assert await timers.cancel("late", now=now) == 1


async def test_one_timer_left_pending_for_weeks_keeps_only_its_own_key(
    mongo: Any, db_name: Callable[[str], str]
) -> None:
    from herald_kit import REPLAY_WINDOW
    from herald_scheduler.adapters.timers import TimerRepository

    now = utc_now()
    db = mongo[db_name("scheduler")]
    timers = TimerRepository(db)
    await timers.ensure_indexes()
    old = now - REPLAY_WINDOW - 5 * DAY
    # Escalation timers of three weeks ago, fired long since...
    for i in range(20):
        await timers.schedule(timer_id=f"t{i}", key=f"esc:{i}", due_at=old, request={}, now=old)
    await db["timers"].update_many({}, {"$set": {"state": "fired"}})
    # ...and one that has not fired for 16 days (a row that fails whenever it fires, say).
    stuck = now - REPLAY_WINDOW - DAY
    await timers.schedule(timer_id="stuck", key="esc:stuck", due_at=stuck, request={}, now=old)

    assert await timers.sweep(before=now - REPLAY_WINDOW) == 20
    assert await _ids(db["timers"]) == ["stuck"]
    assert await _ids(db["timer_keys"]) == ["esc:stuck"]  # its cancel may still come

    # Settled `failed` (it could not be fired), it goes with its key like any settled timer.
    await db["timers"].update_one({"_id": "stuck"}, {"$set": {"state": "failed"}})
    assert await timers.sweep(before=now - REPLAY_WINDOW) == 1
    assert await _ids(db["timers"]) == [] and await _ids(db["timer_keys"]) == []


def _forgotten(collection: str) -> float:
    labels = {"collection": collection}
    return REGISTRY.get_sample_value("herald_rows_forgotten_total", labels) or 0.0


async def _ids(rows: Any) -> list[str]:
    return sorted([d["_id"] async for d in rows.find({}, {"_id": 1})])
