"""Durable time on the real broker and database: timers across restarts, schedules on two
replicas, and an audience fan-out that resumes after a crash."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from test_scheduler_support import (
    Doc,
    Publisher,
    Requests,
    active_campaign,
    publish_audience,
    scheduler,
)

from herald_contracts import (
    TIMER_REQUESTED,
    CampaignRef,
    ContactRequest,
    TimerRequest,
    Topics,
)
from herald_scheduler.adapters.timers import TimerRepository
from herald_scheduler.domain.campaigns import fire_key
from support import eventually


def _request(rid: str, customer: str) -> ContactRequest:
    ref = CampaignRef(
        id="camp-1",
        version=1,
        name="n",
        topic="service-updates",
        messages={"sms": {"en": {"body": "hi"}}},
    )
    return ContactRequest(
        request_id=rid,
        campaign=ref,
        customer_id=customer,
        trigger_key="case-1:1",
        requested_at=datetime.now(UTC),
        attempt=2,
    )


def _timer(timer_id: str, key: str, due_in: float, rid: str) -> TimerRequest:
    return TimerRequest(
        timer_id=timer_id,
        key=key,
        due_at=datetime.now(UTC) + timedelta(seconds=due_in),
        reason="escalation",
        request=_request(rid, "cust-1"),
    )


async def test_timer_survives_a_restart_and_fires_once(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    db = db_name("scheduler")
    timers = mongo[db]["timers"]
    async with scheduler(infra, namespace, db):
        await publisher.send(TIMER_REQUESTED, _timer("t-1", "req-1", 3, "req-1"), "cust-1")
        # The same request again (a dispatcher retry) must not make a second timer.
        await publisher.send(TIMER_REQUESTED, _timer("t-1", "req-1", 3, "req-1"), "cust-1")
        await publisher.send(TIMER_REQUESTED, _timer("t-2", "req-2", 3, "req-2"), "cust-1")
        await publisher.send(
            TIMER_REQUESTED, TimerRequest(timer_id="c-2", key="req-2", action="cancel"), "cust-1"
        )

        async def cancelled() -> bool:
            return await timers.count_documents({"_id": "t-2", "state": "cancelled"}) == 1

        await eventually(cancelled)
        assert await timers.count_documents({"state": "pending"}) == 1
    # The replica stopped before the timer was due; nothing went out.
    assert await requests.poll() == []

    async with scheduler(infra, namespace, db):
        got = await requests.wait_for(lambda items: bool(items))

        async def fired() -> bool:
            return await timers.count_documents({"_id": "t-1", "state": "fired"}) == 1

        await eventually(fired)
    assert [(r.request_id, r.attempt) for r in got] == [("req-1", 2)]
    # A third replica finds nothing left to fire.
    async with scheduler(infra, namespace, db) as client:
        app = client._transport.app  # type: ignore[attr-defined]
        assert await app.state.timer_service.fire_due() == 0
        # Settled rows are swept once they are older than the retention; pending ones stay.
        await publisher.send(TIMER_REQUESTED, _timer("t-3", "req-3", 3600, "req-3"), "cust-1")
        await eventually(lambda: timers.count_documents({"_id": "t-3"}))
        assert await app.state.timers.sweep(before=datetime.now(UTC) - timedelta(hours=1)) == 0
        later = datetime.now(UTC) + timedelta(seconds=60)
        assert await app.state.timers.sweep(before=later) == 2
        assert [d["_id"] async for d in timers.find({})] == ["t-3"]
    assert len(await requests.poll()) == 1


async def test_two_replicas_racing_for_the_same_due_timers_fire_each_once(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    db = db_name("scheduler")
    timers = mongo[db]["timers"]
    n = 60
    async with scheduler(infra, namespace, db, instance_id="one") as one:
        async with scheduler(infra, namespace, db, instance_id="two") as two:
            apps = [c._transport.app for c in (one, two)]  # type: ignore[attr-defined]
            # All due at the same instant, so both replicas' pollers find them in one poll.
            due = datetime.now(UTC) + timedelta(seconds=1)
            repo: TimerRepository = apps[0].state.timers
            for i in range(n):
                request = _request(f"race-{i}", f"cust-{i}").model_dump(mode="json")
                await repo.schedule(
                    timer_id=f"t-{i}", key=f"race-{i}", due_at=due, request=request, now=due
                )
            await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
            # Beside the two pollers, both replicas fire at once on purpose.
            await asyncio.gather(*(app.state.timer_service.fire_due() for app in apps * 2))

            async def all_fired() -> bool:
                return await timers.count_documents({"state": "fired"}) == n

            await eventually(all_fired)
            items = await requests.wait_for(lambda items: len(items) >= n)
            await asyncio.sleep(1)  # a duplicate would have arrived by now
            items = await requests.poll()
    per_request = Counter(r.request_id for r in items)
    assert per_request == Counter({f"race-{i}": 1 for i in range(n)}), per_request


async def test_a_timer_whose_request_expired_is_closed_without_sending(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    from prometheus_client import REGISTRY

    def expired_count(kind: str) -> float:
        labels = {"kind": kind, "outcome": "expired"}
        return REGISTRY.get_sample_value("herald_scheduler_timers_total", labels) or 0.0

    db = db_name("scheduler")
    timers = mongo[db]["timers"]
    before = {kind: expired_count(kind) for kind in ("timer", "delay")}
    async with scheduler(infra, namespace, db) as client:
        app = client._transport.app  # type: ignore[attr-defined]
        now = datetime.now(UTC)
        rows = [
            # (timer id, kind, request id, attempt, escalation of, expiry): a dispatcher's
            # escalation whose request expired while it waited, a first attempt the dispatcher
            # deferred (quiet hours) that expired likewise, a contact's own request deferred
            # onto its next channel after the first failed before sending (attempt 2) likewise,
            # the scheduler's own delayed request likewise, and a delayed request still in time.
            ("t-exp", "timer", "r-exp", 2, "m-1", now - timedelta(seconds=1)),
            ("t-exp1", "timer", "r-exp1", 1, None, now - timedelta(seconds=1)),
            ("t-exp2", "timer", "r-exp2", 2, None, now - timedelta(seconds=1)),
            ("d-exp", "delay", "r-dexp", 1, None, now - timedelta(seconds=1)),
            ("d-live", "delay", "r-live", 1, None, now + timedelta(hours=1)),
        ]
        for i, (tid, kind, rid, attempt, of, expires) in enumerate(rows):
            request = _request(rid, "cust-1").model_copy(
                update={"expires_at": expires, "attempt": attempt, "escalation_of": of}
            )
            await app.state.timers.schedule(
                timer_id=tid,
                key=rid,
                kind=kind,
                # Earliest first: the expired rows settle before the live one is sent.
                due_at=now - timedelta(seconds=len(rows) - i),
                request=request.model_dump(mode="json"),
                now=now,
            )

        async def settled() -> bool:
            return await timers.count_documents({"state": "pending"}) == 0

        await eventually(settled)
        states = {d["_id"]: d async for d in timers.find({})}
        assert {k: d["state"] for k, d in states.items()} == {
            "t-exp": "expired",
            "t-exp1": "expired",
            "t-exp2": "expired",
            "d-exp": "expired",
            "d-live": "fired",
        }
        assert all(d["fired_at"] is not None for d in states.values())

        # Each contact's own request that expired while it waited ends as suppressed (expired)
        # in the campaign's stats, whatever its attempt; the expired delayed request counts as
        # requested too (it never went out, so nothing else counted it). The escalation
        # followed a contact that was made, so it adds nothing.
        async def counted() -> bool:
            stats = await app.state.stats.get("camp-1")
            return stats["requested"] == 2 and stats["suppressed_by_reason"] == {"expired": 3}

        await eventually(counted)
        # Firing an expired row again (a replica whose claim lapsed) counts nothing twice.
        await app.state.timer_service._publish_expired(
            _request("r-dexp", "cust-1").model_copy(update={"attempt": 1}), "delay", now
        )
        await asyncio.sleep(0.5)
        stats = await app.state.stats.get("camp-1")
        assert stats["requested"] == 2 and stats["suppressed_by_reason"] == {"expired": 3}
        got = await requests.wait_for(lambda items: bool(items))
        await asyncio.sleep(0.5)  # anything else sent would have arrived by now
        got = await requests.poll()
    assert [r.request_id for r in got] == ["r-live"]
    assert expired_count("timer") == before["timer"] + 3
    assert expired_count("delay") == before["delay"] + 1


async def test_timer_without_due_time_goes_to_the_dlq(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    publisher: Publisher,
) -> None:
    from aiokafka import AIOKafkaConsumer

    from herald_contracts import dlq_topic

    async with scheduler(infra, namespace, db_name("scheduler")):
        bad = TimerRequest(timer_id="t-bad", key="k", request=_request("r", "cust-1"))
        await publisher.send(TIMER_REQUESTED, bad, "cust-1")
        consumer = AIOKafkaConsumer(
            dlq_topic("scheduler-timers").name(namespace),
            bootstrap_servers=infra["kafka"],
            auto_offset_reset="earliest",
            group_id=f"dlq-{uuid.uuid4().hex[:6]}",
        )
        await consumer.start()
        try:
            records: list[object] = []

            async def dead() -> bool:
                for recs in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(recs)
                return bool(records)

            await eventually(dead)
        finally:
            await consumer.stop()
        headers = dict(records[0].headers)  # type: ignore[attr-defined]
        assert headers["x-herald-field"] == b"due_at"


def one_id_per_customer_and_fire(items: list[ContactRequest]) -> dict[str, set[str]]:
    """Assert that each fire asked for each customer under one request id, and no two asks
    share an id; the customers each fire reached.

    A fan-out cut off by a stop, or still running on a holder that stalled, can have a batch
    published again by the replica that resumes the fire: under the same ids, which the
    dispatcher drops, so the customer is contacted once.
    """
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in items:
        ids[(r.trigger_key, r.customer_id)].add(r.request_id)
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({r.request_id for r in items}) == len(ids)
    reached: dict[str, set[str]] = defaultdict(set)
    for trigger_key, customer in ids:
        reached[trigger_key].add(customer)
    return reached


SCHEDULE_EVERY_SECOND = {"kind": "schedule", "cron": "* * * * * *", "time_zone": "Europe/Paris"}


async def test_two_replicas_emit_each_fire_once(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    db = db_name("scheduler")
    audience = ["cust-a", "cust-b", "cust-c"]
    await publish_audience(publisher, audience)
    # Older snapshots and erased customers still sit in the compacted topic: only each
    # customer's latest snapshot counts.
    await publish_audience(publisher, ["cust-nl", "cust-gone"])
    await publish_audience(publisher, ["cust-nl"], locale="nl", version=2)
    await publisher.producer.send_and_wait(
        Topics.CONTACTS_PREFERENCES.name(namespace), None, key=b"cust-gone"
    )
    async with scheduler(infra, namespace, db, instance_id="one") as one:
        async with scheduler(infra, namespace, db, instance_id="two") as two:

            async def view_ready() -> bool:
                return await mongo[db]["contacts"].count_documents({}) == 4  # gone is gone

            await eventually(view_ready)
            cid = await active_campaign(
                one,
                trigger={**SCHEDULE_EVERY_SECOND, "audience": 'contact.locale == "en"'},
            )
            fires: set[str] = set()

            def fired(n: int) -> Callable[[list[ContactRequest]], bool]:
                def check(items: list[ContactRequest]) -> bool:
                    fires.update(r.trigger_key for r in items)
                    return len(fires) >= n

                return check

            await requests.wait_for(fired(3))
            leader = await mongo[db]["leases"].find_one({"_id": "schedules"})
            assert leader is not None and leader["holder"] in ("one", "two")
            # The leader goes away; the standby takes over and the schedule carries on.
            standby = two if leader["holder"] == "one" else one
            gone = one if standby is two else two
            await gone._transport.app.state.schedules.stop()  # type: ignore[attr-defined]
            before = len(fires)
            await requests.wait_for(fired(before + 3))
            r = await standby.post(f"/v1/campaigns/{cid}/pause")
            assert r.status_code == 200
    items = await requests.poll()
    reached = one_id_per_customer_and_fire(items)
    assert {r.customer_id for r in items} == set(audience)
    # A fire reaches part of the audience only when the pause halted it or the stop cut it off
    # (on a slow machine several fan-outs can be in flight then); every completed fire reached
    # everyone.
    outcomes = {f["trigger_key"]: f.get("outcome") async for f in mongo[db]["fires"].find({})}
    partial = [k for k, customers in reached.items() if len(customers) < len(audience)]
    assert all(outcomes.get(k) != "completed" for k in partial), (partial, outcomes)
    assert sum(1 for o in outcomes.values() if o == "completed") >= 3


@pytest.mark.parametrize("death", ["crashed", "killed", "stalled"])
async def test_a_holder_that_dies_without_releasing_is_taken_over_after_the_lease(
    death: str,
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """crashed: the holder's process is gone (no renewal, no jobs, no release). killed: gone
    too, but in the middle of a fire: APScheduler had moved its job store past the second and
    the fire's row was not written yet. stalled: only its renewal stopped, so its APScheduler
    keeps firing beside the new holder's until it notices; fire keys keep each fire once."""
    db = db_name("scheduler")
    audience = ["cust-a", "cust-b"]
    await publish_audience(publisher, audience)
    leases = mongo[db]["leases"]
    async with scheduler(infra, namespace, db, instance_id="one") as one:

        async def view_ready() -> bool:
            return await mongo[db]["contacts"].count_documents({}) == len(audience)

        await eventually(view_ready)
        cid = await active_campaign(one, trigger=SCHEDULE_EVERY_SECOND)
        fires: set[str] = set()

        def fired(n: int) -> Callable[[list[ContactRequest]], bool]:
            def check(items: list[ContactRequest]) -> bool:
                fires.update(r.trigger_key for r in items)
                return len(fires) >= n

            return check

        await requests.wait_for(fired(2))
        async with scheduler(infra, namespace, db, instance_id="two") as two:
            standby = two._transport.app.state.schedules  # type: ignore[attr-defined]
            lease = await leases.find_one({"_id": "schedules"})
            assert lease is not None and lease["holder"] == "one" and not standby.leading
            # The holder dies: its renewal loop ends without the release a clean stop does.
            runner = one._transport.app.state.schedules  # type: ignore[attr-defined]
            handed: list[datetime] = []
            hung: list[asyncio.Task[None]] = []
            if death == "killed":
                # From now on the holder never gets past a fire's first step.
                async def killed_mid_fire(campaign_id: str, scheduled: datetime) -> None:
                    handed.append(scheduled)
                    task = asyncio.current_task()
                    assert task is not None
                    hung.append(task)
                    await asyncio.Event().wait()

                monkeypatch.setattr(runner, "_fire", killed_mid_fire)

                async def one_handed_over() -> bool:
                    return bool(handed)

                await eventually(one_handed_over)
            runner._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner._task
            if death == "killed":
                jobs = mongo[db]["apscheduler_jobs"]
                job = await jobs.find_one({"_id": cid})
                # The job store is past the second handed over: APScheduler will not fire it again.
                assert job is not None and job["next_run_time"] > handed[0].timestamp()
                for task in hung:
                    task.cancel()
            if death in ("crashed", "killed"):
                await runner._step_down()
            died = datetime.now(UTC)
            # While the dead holder's lease runs, the standby does not take it.
            await standby.tick()
            assert not standby.leading
            lease = await leases.find_one({"_id": "schedules"})
            assert lease is not None and lease["holder"] == "one" and lease["until"] > died

            async def taken_over() -> bool:
                lease = await leases.find_one({"_id": "schedules"})
                return lease is not None and lease["holder"] == "two" and standby.leading

            await eventually(taken_over)
            took_over = datetime.now(UTC)
            # Not before the lease (2 s, renewed every 0.3 s) ran out.
            assert took_over - died >= timedelta(seconds=1)
            # The new holder fires the schedule: fires scheduled after the takeover go out.
            after = fire_key(took_over + timedelta(seconds=1))

            def fired_after(items: list[ContactRequest]) -> bool:
                fires.update(r.trigger_key for r in items)
                return sum(1 for k in fires if k > after) >= 2

            await requests.wait_for(fired_after)
            assert (await two.post(f"/v1/campaigns/{cid}/pause")).status_code == 200
    items = await requests.poll()
    one_id_per_customer_and_fire(items)
    # No fire was lost in the gap: the new holder caught up on the seconds nobody fired, and
    # on those the killed holder was handed but never recorded.
    keys = sorted(fires)
    assert all(fire_key(t) in fires for t in handed)
    seconds = [datetime.strptime(k, "fire:%Y-%m-%dT%H:%M:%SZ") for k in keys]
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(seconds)), keys


async def test_killed_fan_out_resumes_and_completes_without_duplicates(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    db = db_name("scheduler")
    audience = [f"cust-{i:03d}" for i in range(60)]
    await publish_audience(publisher, audience)
    fires = mongo[db]["fires"]
    # Ten per batch at twenty a second: the fan-out takes three seconds, time to kill it.
    async with scheduler(infra, namespace, db, fanout_batch=10) as client:

        async def view_ready() -> bool:
            return await mongo[db]["contacts"].count_documents({}) == len(audience)

        await eventually(view_ready)
        at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()  # still ahead at activation
        cid = await active_campaign(
            client,
            trigger={"kind": "schedule", "at": at, "time_zone": "UTC"},
            limits={"rate_per_second": 20},
        )

        async def midway() -> Doc | None:
            return await fires.find_one({"campaign_id": cid, "requested": {"$gte": 20}})

        await eventually(midway)
    row = await fires.find_one({"campaign_id": cid})
    assert row is not None and row["done"] is False and row["requested"] < len(audience)

    async with scheduler(infra, namespace, db, fanout_batch=10):

        async def done() -> bool:
            return await fires.count_documents({"campaign_id": cid, "done": True}) == 1

        await eventually(done)
        items = await requests.wait_for(
            lambda items: {r.customer_id for r in items} == set(audience)
        )
    # Every customer has exactly one request id, and no two customers share one. Batches in
    # flight when the replica died go out again under the same ids (the dispatcher drops
    # those): at most the two batches the fan-out keeps in flight.
    ids_per_customer = {c: {r.request_id for r in items if r.customer_id == c} for c in audience}
    assert all(len(ids) == 1 for ids in ids_per_customer.values())
    assert len({r.request_id for r in items}) == len(audience)
    assert len(items) - len(audience) <= 2 * 10
    assert {r.trigger_key for r in items} == {row["trigger_key"]}
    final = await fires.find_one({"campaign_id": cid})
    assert final is not None and final["requested"] == len(audience)


@pytest.mark.parametrize("read_ahead", [0, 1], ids=["in-process", "read-ahead worker"])
async def test_an_unpaced_fan_out_publishes_every_chunk_once_and_counts_it(
    read_ahead: int,
    capsys: pytest.CaptureFixture[str],
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    # No rate: a chunk's checkpoint and stats are written while the next chunk goes out. Chunks
    # of 7 over 61 customers leave a short last chunk on every partition. With the read-ahead
    # worker (a large fire's), partitions after the first are read in a second process.
    db = db_name("scheduler")
    audience = [f"cust-{i:03d}" for i in range(61)]
    await publish_audience(publisher, audience)
    fires = mongo[db]["fires"]
    async with scheduler(
        infra, namespace, db, fanout_batch=7, fanout_read_ahead_records=read_ahead
    ) as client:

        async def view_ready() -> bool:
            return await mongo[db]["contacts"].count_documents({}) == len(audience)

        await eventually(view_ready)
        at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()  # still ahead at activation
        cid = await active_campaign(
            client, trigger={"kind": "schedule", "at": at, "time_zone": "UTC"}
        )

        async def done() -> Doc | None:
            return await fires.find_one({"campaign_id": cid, "done": True})

        row = await eventually(done)
        items = await requests.wait_for(
            lambda items: {r.customer_id for r in items if r.campaign.id == cid} == set(audience)
        )
        stats = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
    mine = [r for r in items if r.campaign.id == cid]
    assert row["outcome"] == "completed"
    assert sorted(r.customer_id for r in mine) == audience  # each customer exactly once
    assert row["requested"] == len(audience) == stats["requested"]
    assert row["cp_part"] == len(row["ends"]) and row["cp_off"] == 0  # past the last partition
    # The service's log line (JSON on stdout) says how many partitions the worker read: all
    # but the first, which the fan-out reads itself while the worker starts.
    logged = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    ended = [r for r in logged if r.get("msg") == "fan-out ended"]
    worker_read = sum(1 for end in row["ends"].values() if end) - 1 if read_ahead else 0
    assert [r["read_ahead_partitions"] for r in ended] == [worker_read]


async def test_pausing_halts_a_fan_out_and_a_paused_schedule_fires_nothing(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    db = db_name("scheduler")
    audience = [f"cust-{i:03d}" for i in range(60)]
    await publish_audience(publisher, audience)
    fires = mongo[db]["fires"]
    async with scheduler(infra, namespace, db, fanout_batch=10) as client:
        at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()  # still ahead at activation
        cid = await active_campaign(
            client,
            trigger={"kind": "schedule", "at": at, "time_zone": "UTC"},
            limits={"rate_per_second": 20},
        )

        async def midway() -> Doc | None:
            return await fires.find_one({"campaign_id": cid, "requested": {"$gte": 20}})

        await eventually(midway)
        assert (await client.post(f"/v1/campaigns/{cid}/pause")).status_code == 200

        async def halted() -> Doc | None:
            return await fires.find_one({"campaign_id": cid, "done": True})

        row = await eventually(halted)
        assert row["outcome"] == "halted" and row["requested"] < len(audience)

        # A paused schedule fires nothing: its job leaves the job store at the next tick, and a
        # fire already due finds the campaign paused.
        every = await active_campaign(
            client, trigger={"kind": "schedule", "cron": "*/3 * * * * *", "time_zone": "UTC"}
        )
        assert (await client.post(f"/v1/campaigns/{every}/pause")).status_code == 200
        app = client._transport.app  # type: ignore[attr-defined]
        await app.state.schedules.tick()
        assert app.state.schedules.job_ids() == set()
        before = await fires.count_documents({"campaign_id": every})
        await asyncio.sleep(3.5)  # a window longer than the cron period, not a timing assertion
        assert await fires.count_documents({"campaign_id": every}) == before
    # Exactly the checkpointed part of the audience went out: the batch in flight at the halt
    # was settled, and nothing was sent after it.
    got = await requests.wait_for(lambda items: len(items) >= row["requested"])
    assert len({r.customer_id for r in got if r.campaign.id == cid}) == row["requested"]


async def test_timers_written_before_the_key_index_can_still_be_cancelled(
    infra: dict[str, str], db_name: Callable[[str], str]
) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(infra["mongo"])
    try:
        repo = TimerRepository(client[db_name("scheduler")])
        now = datetime.now(UTC)
        # A row as an earlier version wrote it (no timer_keys entry), and one written now.
        await repo.timers.insert_one(
            {
                "_id": "old",
                "kind": "timer",
                "key": "escalate:r1:1",
                "state": "pending",
                "due_at": now + timedelta(hours=1),
                "claimed_until": now,
                "request": None,
            }
        )
        assert await repo.schedule(
            timer_id="new",
            key="escalate:r1:1",
            due_at=now + timedelta(hours=1),
            request=None,
            now=now,
        )
        assert await repo.index_pending_keys() == 2
        assert await repo.index_pending_keys() == 0  # once per database
        assert await repo.cancel("escalate:r1:1", now=now) == 2
        assert await repo.cancel("escalate:nobody:1", now=now) == 0
        states = {d["_id"]: d["state"] async for d in repo.timers.find({})}
        assert states == {"old": "cancelled", "new": "cancelled"}
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def gated_scheduler(
    infra: dict[str, str], namespace: str, db: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """A scheduler whose timers look at their campaign often, short enough for a test: a row
    a pause holds comes back within a second, a campaign's status is read again within 0.2 s."""
    async with scheduler(infra, namespace, db) as client:
        app = client._transport.app  # type: ignore[attr-defined]
        app.state.timer_service.hold = timedelta(seconds=1)
        app.state.timer_service.status_ttl = 0.2
        yield client, app


async def test_a_paused_campaign_holds_its_timers_and_an_archived_one_cancels_them(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    db = db_name("scheduler")
    timers = mongo[db]["timers"]
    async with gated_scheduler(infra, namespace, db) as (client, app):
        paused = await active_campaign(client)
        archived = await active_campaign(client)
        for cid, action in ((paused, "pause"), (archived, "pause"), (archived, "archive")):
            assert (await client.post(f"/v1/campaigns/{cid}/{action}")).status_code == 200
        now = datetime.now(UTC)
        due = now + timedelta(seconds=1)
        repo: TimerRepository = app.state.timers
        ids: dict[str, list[str]] = {}
        for cid in (paused, archived):
            base = _request("-", "cust-1")
            ref = base.campaign.model_copy(update={"id": cid})

            def request(rid: str, ref: CampaignRef = ref) -> Doc:
                update = {"request_id": rid, "campaign": ref, "attempt": 1}
                return _request(rid, "cust-1").model_copy(update=update).model_dump(mode="json")

            # The scheduler's own delayed request, a dispatcher's deferral of a first attempt,
            # and a coalescing window: each belongs to the campaign through its request.
            await repo.schedule(
                timer_id=f"d-{cid}",
                key=f"case:{cid}",
                kind="delay",
                due_at=due,
                request=request(f"rd-{cid}"),
                now=now,
            )
            await repo.schedule(
                timer_id=f"t-{cid}",
                key=f"defer:{cid}",
                due_at=due,
                request=request(f"rt-{cid}"),
                now=now,
            )
            window = f"coalesce:{cid}:case-1:cust-1"
            await repo.coalesce(
                key=window, case_version=1, due_at=due, request=request(f"rc-{cid}"), now=now
            )
            ids[cid] = [f"d-{cid}", f"t-{cid}", window]

        async def states(cid: str) -> set[str]:
            return {d["state"] async for d in timers.find({"_id": {"$in": ids[cid]}})}

        async def archived_cancelled() -> bool:
            return await states(archived) == {"cancelled"}

        await eventually(archived_cancelled)
        await asyncio.sleep(2)  # past the due time and a hold: a paused row would have fired
        assert await states(paused) == {"pending"}
        held = [d async for d in timers.find({"_id": {"$in": ids[paused]}})]
        assert all(d["due_at"] > due for d in held)
        assert await requests.poll() == []

        # Resumed, the campaign's held rows are sent; the archived campaign's never are.
        assert (await client.post(f"/v1/campaigns/{paused}/resume")).status_code == 200
        got = await requests.wait_for(lambda items: len(items) >= 3)

        async def paused_fired() -> bool:
            return await states(paused) == {"fired"}

        await eventually(paused_fired)
        await asyncio.sleep(0.5)  # anything else sent would have arrived by now
        got = await requests.poll()

        # The scheduler's own rows count as requested when they go out; the deferral was
        # counted when first requested. No request of the archived campaign's is counted.
        async def counted() -> bool:
            return bool((await app.state.stats.get(paused))["requested"] == 2)

        await eventually(counted)
        assert (await app.state.stats.get(archived))["requested"] == 0

        # The archived campaign's deferred first attempt had been counted as requested when the
        # dispatcher first took it: it ends as suppressed instead of staying open for good.
        # Its own delayed and coalescing rows were never counted and end without a status.
        async def archived_closed() -> bool:
            stats = await app.state.stats.get(archived)
            return bool(stats["suppressed_by_reason"] == {"campaign-archived": 1})

        await eventually(archived_closed)
    assert sorted(r.request_id for r in got) == sorted(
        [f"rd-{paused}", f"rt-{paused}", f"rc-{paused}"]
    )


async def test_a_paced_campaign_resumed_sends_its_held_timers_at_its_pace(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    """A pause holds every row that comes due; on resume they would all come due within one
    hold. Each takes a new slot of the campaign's pace, so the customers are not contacted in
    one burst the pace exists to prevent."""
    db = db_name("scheduler")
    timers = mongo[db]["timers"]
    rate = 4.0
    async with gated_scheduler(infra, namespace, db) as (client, app):
        cid = await active_campaign(client, limits={"rate_per_second": rate})
        assert (await client.post(f"/v1/campaigns/{cid}/pause")).status_code == 200
        now = datetime.now(UTC)
        repo: TimerRepository = app.state.timers
        ref = _request("-", "cust-1").campaign.model_copy(update={"id": cid})
        ids = [f"d-{cid}-{n}" for n in range(6)]
        for n, timer_id in enumerate(ids):
            request = _request(f"r{n}-{cid}", f"cust-{n}").model_copy(update={"campaign": ref})
            await repo.schedule(
                timer_id=timer_id,
                key=f"case:{cid}:{n}",
                kind="delay",
                due_at=now + timedelta(milliseconds=100 * n),  # within 1/rate of each other
                request=request.model_dump(mode="json"),
                now=now,
            )

        async def all_held() -> bool:
            rows = [d async for d in timers.find({"_id": {"$in": ids}})]
            return all(d.get("held") for d in rows)

        await eventually(all_held)
        assert (await client.post(f"/v1/campaigns/{cid}/resume")).status_code == 200
        got = await requests.wait_for(lambda items: len(items) >= len(ids))

        async def all_fired() -> bool:
            return {d["state"] async for d in timers.find({"_id": {"$in": ids}})} == {"fired"}

        await eventually(all_fired)
    assert sorted(r.request_id for r in got) == sorted(f"r{n}-{cid}" for n in range(6))
    # Each went out in its own slot: the times they were sent at are 1/rate apart at least.
    rows = [d async for d in timers.find({"_id": {"$in": ids}})]
    sent = sorted(d["due_at"] for d in rows)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= 1 / rate - 0.002, gaps


@pytest.mark.parametrize("closed", ["fired", "expired", "failed"])
async def test_a_closed_coalescing_window_reopens_for_a_newer_version(
    infra: dict[str, str], db_name: Callable[[str], str], closed: str
) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(infra["mongo"])
    try:
        repo = TimerRepository(client[db_name("scheduler")])
        now = datetime.now(UTC)
        window = "coalesce:camp-1:case-1:cust-1"
        request = _request("r1", "cust-1").model_dump(mode="json")
        assert (
            await repo.coalesce(key=window, case_version=1, due_at=now, request=request, now=now)
            == "opened"
        )
        # The window closed: sent, expired unsent (it fired after the request's expiry, say
        # after the scheduler was down for a while), or failed (it could not be fired).
        row = await repo.claim(window, now=now, lease=timedelta(seconds=30))
        assert row is not None and await repo.failed_attempt(row, error="ValueError") == 1
        assert await repo.settle(row, closed, now=now)
        later = now + timedelta(hours=2)
        assert (
            await repo.coalesce(
                key=window, case_version=2, due_at=later, request=request, now=later
            )
            == "reopened"
        )
        row = await repo.get(window)
        assert row is not None
        assert (row["state"], row["case_version"], row["attempts"]) == ("pending", 2, 0)
        assert row["due_at"].replace(tzinfo=UTC) > now + timedelta(hours=1)  # the new window
        # The same version again (a replay) is still stale.
        assert (
            await repo.coalesce(
                key=window, case_version=2, due_at=later, request=request, now=later
            )
            == "stale"
        )
    finally:
        await client.close()


async def test_a_row_that_cannot_be_fired_ends_failed_and_holds_back_no_other(
    mongo: AsyncMongoClient[Doc], db_name: Callable[[str], str]
) -> None:
    from herald_scheduler.messaging.timers import MAX_FIRE_ATTEMPTS, TimerService

    class Producer:
        sent: list[str] = []

        async def publish(self, event_type: str, data: ContactRequest, **_: Any) -> None:
            self.sent.append(data.request_id)

    class Stats:
        async def requested(self, campaign_id: str, request_ids: list[str]) -> None:
            return None

    repo = TimerRepository(mongo[db_name("scheduler")])
    now = datetime.now(UTC)
    # Due first, a row this version cannot read; then a good one.
    await repo.schedule(
        timer_id="poison", key="esc:1", due_at=now - timedelta(seconds=2), request={}, now=now
    )
    good = _request("r2", "cust-1").model_dump(mode="json")
    await repo.schedule(
        timer_id="good", key="esc:2", due_at=now - timedelta(seconds=1), request=good, now=now
    )
    producer = Producer()
    service = TimerService(
        repo,
        producer,
        Stats(),
        poll_seconds=0.01,
        lease_seconds=0.05,  # type: ignore[arg-type]
    )
    settled = 0
    for _ in range(MAX_FIRE_ATTEMPTS):
        settled += await service.fire_due()
        await asyncio.sleep(0.1)  # past the lease: the failed row is claimed again
    assert settled == 2 and producer.sent == ["r2"]
    row = await repo.get("poison")
    assert row is not None
    assert (row["state"], row["attempts"], row["error"]) == (
        "failed",
        MAX_FIRE_ATTEMPTS,
        "ValidationError",
    )
    assert await service.fire_due() == 0  # never tried again


async def test_a_cancel_that_arrives_before_its_timer_still_cancels_it(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    db = db_name("scheduler")
    timers = mongo[db]["timers"]
    keys = mongo[db]["timer_keys"]
    async with scheduler(infra, namespace, db) as client:
        app = client._transport.app  # type: ignore[attr-defined]
        # The cancel of an escalation, then the escalation itself (the two arrived out of
        # order); another escalation, never cancelled, beside it.
        cancel = TimerRequest(timer_id="c-1", key="escalate:r1:1", action="cancel")
        await publisher.send(TIMER_REQUESTED, cancel, "cust-1")
        await publisher.send(TIMER_REQUESTED, _timer("t-1", "escalate:r1:1", 1, "r1"), "cust-1")
        await publisher.send(TIMER_REQUESTED, _timer("t-2", "escalate:r2:1", 1, "r2"), "cust-1")

        async def both_settled() -> bool:
            states = {d["_id"]: d["state"] async for d in timers.find({})}
            return states == {"t-1": "cancelled", "t-2": "fired"}

        await eventually(both_settled)
        got = await requests.wait_for(lambda items: bool(items))
        await asyncio.sleep(1)  # the cancelled one would have gone out by now
        got = await requests.poll()
        assert [r.request_id for r in got] == ["r2"]

        # A tombstone that no timer joined goes with the other keys once past the retention.
        repo: TimerRepository = app.state.timers
        now = datetime.now(UTC)
        assert await repo.cancel("escalate:nobody:1", now=now) == 0
        assert await keys.find_one({"_id": "escalate:nobody:1"}) is not None
        await repo.sweep(before=now + timedelta(hours=1))
        assert await keys.find_one({"_id": "escalate:nobody:1"}) is None


async def test_an_escalation_asked_for_at_once_moves_its_timer_and_passes_the_campaign_gate(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    publisher: Publisher,
    requests: Requests,
    mongo: AsyncMongoClient[Doc],
) -> None:
    db = db_name("scheduler")
    timers = mongo[db]["timers"]
    async with gated_scheduler(infra, namespace, db) as (client, _):
        active, paused = await active_campaign(client), await active_campaign(client)
        assert (await client.post(f"/v1/campaigns/{paused}/pause")).status_code == 200
        for cid in (active, paused):
            # An attempt's escalation timer, due in ten minutes; its message then fails and the
            # dispatcher asks for the same timer due now (the second order: failure first).
            base = _timer(f"e-{cid}", f"escalate:r-{cid}:1", 600, f"r-{cid}")
            assert base.request is not None
            ref = base.request.campaign.model_copy(update={"id": cid})
            nxt = base.request.model_copy(update={"campaign": ref, "escalation_of": "m1"})
            later = base.model_copy(update={"request": nxt})
            now = later.model_copy(update={"due_at": datetime.now(UTC)})
            first, second = (later, now) if cid == active else (now, later)
            await publisher.send(TIMER_REQUESTED, first, "cust-1")
            await publisher.send(TIMER_REQUESTED, second, "cust-1")

        # The active campaign's escalation goes out at once (not in ten minutes), once.
        got = await requests.wait_for(lambda items: bool(items), within=10)
        assert [r.request_id for r in got] == [f"r-{active}"]
        # The paused campaign's is held, not sent, and stays the one row.
        await asyncio.sleep(2)
        assert [r.request_id for r in await requests.poll()] == [f"r-{active}"]
        rows = [d async for d in timers.find({"_id": {"$in": [f"e-{active}", f"e-{paused}"]}})]
        assert {d["_id"]: d["state"] for d in rows} == {
            f"e-{active}": "fired",
            f"e-{paused}": "pending",
        }
        # Resumed: it goes out, once.
        assert (await client.post(f"/v1/campaigns/{paused}/resume")).status_code == 200
        await requests.wait_for(lambda items: len(items) >= 2, within=10)
        await asyncio.sleep(1)
        got = await requests.poll()
        assert [r.request_id for r in got] == [f"r-{active}", f"r-{paused}"]
