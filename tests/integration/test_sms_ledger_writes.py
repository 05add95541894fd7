"""The SMS ledger says 'sending' whenever the provider is called, and an unpaced message gets
there with its claim alone (one write fewer per message); a paced one whose slot is free reads
the opt-out once; statuses called back together are recorded in one write. On the real
database and broker."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from twilio_support import outbound_sms, producer

from herald_kit import Doc, Pacer
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.adapters.provider import Sent
from herald_sms_sender.sending import SmsSending
from support import unique_phone


class Writes(monitoring.CommandListener):
    """Counts insert and update commands on the send ledger, and reads of the opt-outs."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.opt_out_reads = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        if name in ("insert", "update", "findAndModify") and event.command[name] == "send_ledger":
            self.counts[name] += 1
        self.opt_out_reads += name == "find" and event.command[name] == "opt_outs"

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class Provider:
    """The outside provider: notes the ledger row's status at the moment it is called."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows
        self.seen: list[str] = []

    async def send(self, *, to: str, body: str, status_callback: str | None) -> Sent:
        row = await self.rows.find_one({})  # the only message of this database
        self.seen.append(row["status"] if row else "absent")
        return Sent(provider_id=f"SM{len(self.seen):032d}", status="queued")

    async def find_sent(self, *, to: str, body: str, since: datetime) -> list[str]:
        return []


@pytest.fixture
async def ledger_db(
    infra: dict[str, str], db_name: Callable[[str], str]
) -> AsyncIterator[tuple[Any, Any, Writes]]:
    writes = Writes()
    counted: AsyncMongoClient[Doc] = AsyncMongoClient(
        infra["mongo"], tz_aware=True, event_listeners=[writes]
    )
    plain: AsyncMongoClient[Doc] = AsyncMongoClient(infra["mongo"], tz_aware=True)
    name = db_name("sms_ledger")
    try:
        yield counted[name], plain[name]["send_ledger"], writes
    finally:
        await counted.close()
        await plain.close()


@pytest.mark.parametrize(("rate", "updates"), [(0.0, 1), (50.0, 2)])
async def test_the_row_says_sending_at_the_provider_call_and_unpaced_claims_say_it_at_once(
    infra: dict[str, str],
    namespace: str,
    ledger_db: tuple[Any, Any, Writes],
    rate: float,
    updates: int,
) -> None:
    db, rows, writes = ledger_db
    provider = Provider(rows)
    async with producer(infra["kafka"], namespace) as prod:
        sending = SmsSending(
            Ledger(db),
            provider,  # type: ignore[arg-type]
            prod,
            callback_url="http://127.0.0.1:1/status",
            pacer=Pacer(rate),
        )
        msg = outbound_sms(unique_phone())
        await sending.send(msg)
    assert provider.seen == ["sending"]
    row = await rows.find_one({"_id": msg.message_id})
    assert row["status"] == "sent" and row["provider_id"] == "SM" + "1".zfill(32)
    # One insert claims it; a paced message is then marked 'sending' before the call (it may
    # wait for the pacer first), an unpaced one was claimed 'sending'; 'sent' after the call.
    assert writes.counts == Counter({"insert": 1, "update": updates})
    # The opt-out is read with the claim; a paced message whose slot was free waited for
    # nothing, so it is not read again before the call.
    assert writes.opt_out_reads == 1


async def test_statuses_called_back_together_are_recorded_in_one_write_and_each_counted_once(
    ledger_db: tuple[Any, Any, Writes],
) -> None:
    """Each message's final status is called back once: at a hundred SMS a second, one write
    per callback would be the sender's busiest database command. Recorded together, each
    status is still first exactly once, however often its callback is repeated."""
    db, rows, writes = ledger_db
    ledger = Ledger(db)
    ids = [f"m-report-{i}" for i in range(20)]
    await rows.insert_many([{"_id": mid, "status": "sent"} for mid in ids])
    # A status a version that recorded `True` saw before.
    await rows.update_one({"_id": ids[0]}, {"$set": {"reported.delivered": True}})
    writes.counts.clear()

    firsts = await asyncio.gather(*(ledger.first_report(mid, "delivered") for mid in ids))
    assert firsts == [False] + [True] * (len(ids) - 1)
    assert writes.counts == Counter({"update": 1})

    # Callbacks repeated together with new statuses: only the new ones are first, and a status
    # reported twice in one go is first once.
    calls = [(ids[1], "delivered"), (ids[1], "failed"), (ids[2], "failed"), (ids[1], "failed")]
    again = await asyncio.gather(*(ledger.first_report(mid, s) for mid, s in calls))
    assert again[0] is False and again[2] is True
    assert sorted([again[1], again[3]]) == [False, True]
    # A write whose answer was lost, made again (the ledger retries it): its own token is
    # there, so it is still the first.
    lost = [(ids[3], "undelivered", "token-of-a-lost-answer")]
    assert await ledger._report_batch(lost) == [True]
    assert await ledger._report_batch(lost) == [True]
    # Unknown messages are first never.
    assert await ledger.first_report("m-report-absent", "delivered") is False
