"""Campaign stats from delivery statuses and replies, each counted once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect
from test_scheduler_support import (
    active_campaign,
    campaign_body,
    open_publisher,
    open_requests,
    preferences,
    publish_audience,
    scheduler,
)

from herald_contracts import (
    CONTACT_PREFERENCES,
    DELIVERY_STATUS,
    ENGAGEMENT_REPLY,
    DeliveryStatus,
    EngagementReply,
)
from herald_dispatcher.app import create_app as dispatcher_app
from herald_dispatcher.config import Settings as DispatcherSettings
from herald_scheduler.adapters.stats import StatsRepository
from support import api_keys, eventually, running


async def test_stats_count_requests_statuses_and_replies_once(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> None:
    async with (
        scheduler(infra, namespace, db_name("scheduler")) as client,
        open_publisher(infra, namespace) as publisher,
        open_requests(infra, namespace) as requests,
    ):
        cid = await active_campaign(client)
        await publisher.change("case-s", 1, "open", ["cust-1", "cust-2"])
        await publisher.change("case-s", 1, "open", ["cust-1", "cust-2"])  # a replay
        got = await requests.wait_for(lambda items: len(items) >= 4)
        rid = got[0].request_id

        def status(mid: str, st: str, code: str | None = None) -> DeliveryStatus:
            return DeliveryStatus(
                message_id=mid,
                request_id=rid,
                campaign_id=cid,
                customer_id="cust-1",
                channel="sms",
                status=st,  # type: ignore[arg-type]
                error_code=code,
                at=datetime.now(UTC),
            )

        for st in (
            status("m1", "sent"),
            status("m1", "delivered"),
            status("m1", "delivered"),  # redelivered by the broker: counted once
            status("m2", "sent"),
            status("m2", "failed", "30003"),
        ):
            await publisher.send(DELIVERY_STATUS, st, "cust-1")

        async def statuses_counted() -> bool:
            body = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
            return bool(body["channels"].get("sms", {}).get("failed"))

        # Replies are attributed through their message's statuses, which come first in life.
        await eventually(statuses_counted, within=60)
        reply = EngagementReply(
            reply_id="r1",
            customer_id="cust-1",
            channel="sms",
            intent="confirm",
            message_id="m1",
            at=datetime.now(UTC),
        )
        await publisher.send(ENGAGEMENT_REPLY, reply, "cust-1")
        await publisher.send(ENGAGEMENT_REPLY, reply, "cust-1")
        # A last reply on the same partition: once it is counted, the duplicate was judged.
        last = reply.model_copy(update={"reply_id": "r2", "intent": "other", "message_id": "m2"})
        await publisher.send(ENGAGEMENT_REPLY, last, "cust-1")

        async def counted() -> dict[str, object] | None:
            body = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
            sms = body["channels"].get("sms", {})
            return body if body["replies_by_intent"].get("other") and sms.get("failed") else None

        body = await eventually(counted, within=60)
        assert body["requested"] == 2
        sms = body["channels"]["sms"]
        assert (sms["sent"], sms["delivered"], sms["failed"], sms["engaged"]) == (2, 1, 1, 2)
        assert body["failed_by_reason"] == {"30003": 1}
        assert body["replies_by_intent"] == {"confirm": 1, "other": 1}
        assert (await client.get("/v1/campaigns/nope/stats")).status_code == 404


async def test_suppressions_count_once_by_reason_per_campaign_and_channel(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> None:
    async with (
        scheduler(infra, namespace, db_name("scheduler")) as client,
        open_publisher(infra, namespace) as publisher,
    ):
        cid = await active_campaign(client)

        def suppressed(rid: str, reason: str, channel: str | None = None) -> DeliveryStatus:
            # As the dispatcher publishes them: the id derives from the request.
            return DeliveryStatus(
                message_id=f"sup-{rid}",
                request_id=rid,
                campaign_id=cid,
                customer_id="cust-1",
                channel=channel,  # type: ignore[arg-type]
                status="suppressed",
                reason=reason,
                at=datetime.now(UTC),
            )

        for st in (
            suppressed("r1", "no-consent"),
            suppressed("r1", "no-consent"),  # replayed: counted once
            suppressed("r2", "frequency-cap", "sms"),
            suppressed("r3", "still-applies"),
            suppressed("r4", "frequency-cap", "sms"),
        ):
            await publisher.send(DELIVERY_STATUS, st, "cust-1")

        async def counted() -> dict[str, object] | None:
            body = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
            by = body["suppressed_by_reason"]
            return body if sum(by.values()) >= 4 else None

        body = await eventually(counted, within=60)
        assert body["suppressed_by_reason"] == {
            "no-consent": 1,
            "frequency-cap": 2,
            "still-applies": 1,
        }
        sms = body["channels"]["sms"]
        assert sms["suppressed"] == 2 and sms["suppressed_by_reason"] == {"frequency-cap": 2}
        assert sms["sent"] == 0 and body["failed_by_reason"] == {}


async def test_dry_run_weighs_caps_with_the_customers_earlier_contacts(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> None:
    # Caps only: no legal calling window, so the outcome does not depend on the hour the test
    # runs at (the windows' own dry-run behaviour is tested in tests/unit).
    async with (
        scheduler(infra, namespace, db_name("scheduler"), legal_windows={"default": {}}) as client,
        open_publisher(infra, namespace) as publisher,
    ):
        await publish_audience(publisher, ["dc-1", "dc-2"])
        # A marketing campaign reached dc-1 an hour ago (marketing: one a day by default).
        cid = await active_campaign(client, priority="marketing")
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        for mid, status in (("m1", "sent"), ("m1", "delivered")):
            sent = DeliveryStatus(
                message_id=mid,
                request_id="r-dc-1",
                campaign_id=cid,
                customer_id="dc-1",
                channel="sms",
                status=status,  # type: ignore[arg-type]
                at=an_hour_ago,
            )
            await publisher.send(DELIVERY_STATUS, sent, "dc-1")
        case = {
            "case_id": "case-dc",
            "version": 1,
            "customer_ids": ["dc-1", "dc-2"],
            "status": "open",
            "updated_at": "2026-03-02T10:00:00Z",
        }

        async def dry(**changes: object) -> dict[str, object]:
            r = await client.post(
                "/v1/campaigns/dry-run",
                json={"campaign": campaign_body(priority="marketing", **changes), "cases": [case]},
            )
            assert r.status_code == 200, r.text
            body: dict[str, object] = r.json()
            return body

        async def weighed() -> dict[str, object] | None:
            body = await dry()
            contacted = body["contacted"]
            assert isinstance(contacted, list)
            reasons = {o["customer_id"]: o["reason"] for o in contacted}
            return body if reasons.get("dc-1", "").startswith("frequency-cap") else None

        body = await eventually(weighed, within=60)
        contacted = body["contacted"]
        assert isinstance(contacted, list)
        outcome = {o["customer_id"]: o for o in contacted}
        assert outcome["dc-2"]["reason"] == "ranked"
        assert outcome["dc-1"]["reason"] == "frequency-cap-deferred(per-day)"
        due = datetime.fromisoformat(outcome["dc-1"]["at"])
        assert abs((due - (an_hour_ago + timedelta(days=1))).total_seconds()) < 1

        body = await dry(limits={"cap_policy": "suppress"})
        assert [(o["customer_id"], o["reason"]) for o in body["not_contacted"]] == [  # type: ignore[attr-defined]
            ("dc-1", "frequency-cap(per-day)")
        ]
        body = await dry(limits={"counts_towards_cap": False})
        assert len(body["contacted"]) == 2  # type: ignore[arg-type]


def _dispatcher(infra: dict[str, str], namespace: str, db_name: Callable[[str], str]) -> FastAPI:
    """A dispatcher on the test's namespace, deciding without waiting long for a case."""
    return dispatcher_app(
        DispatcherSettings(
            kafka_bootstrap=infra["kafka"],
            mongo_uri=infra["mongo"],
            mongo_db=db_name("dispatcher"),
            topic_namespace=namespace,
            api_keys=api_keys(),
            view_wait_seconds=10.0,
            case_wait_seconds=0.5,
            retry_attempts=1,
        )
    )


async def test_a_dispatcher_suppression_reaches_the_campaign_stats(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> None:
    """Scheduler and dispatcher on one namespace: a case change for a customer who gave no
    consent is requested, suppressed by the dispatcher, and counted by reason."""
    dispatcher = _dispatcher(infra, namespace, db_name)
    async with (
        scheduler(infra, namespace, db_name("scheduler")) as client,
        running(dispatcher),
        open_publisher(infra, namespace) as publisher,
    ):
        cid = await active_campaign(client)
        silent = preferences("cust-quiet").model_copy(update={"consents": {}})
        await publisher.send(CONTACT_PREFERENCES, silent, "cust-quiet")
        await publisher.change("case-q", 1, "open", ["cust-quiet"])
        await publisher.change("case-q", 1, "open", ["cust-quiet"])  # a replay

        async def counted() -> dict[str, object] | None:
            body = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
            return body if body["suppressed_by_reason"] else None

        body = await eventually(counted, within=60)
        await asyncio.sleep(1)
        body = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
        assert body["requested"] == 1
        assert body["suppressed_by_reason"] == {"no-consent": 1}
        assert body["channels"] == {}


async def test_a_reply_read_before_its_messages_first_status_is_counted(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> None:
    """The two topics are read independently: under load delivery.status.v1 lags, and a reply
    reaches the stats before the status that tells which campaign its message belongs to."""
    async with (
        scheduler(infra, namespace, db_name("scheduler")) as client,
        open_publisher(infra, namespace) as publisher,
    ):
        cid = await active_campaign(client)

        def reply(rid: str, intent: str) -> EngagementReply:
            return EngagementReply(
                reply_id=rid,
                customer_id="cust-1",
                channel="sms",
                intent=intent,  # type: ignore[arg-type]
                message_id="m1",
                at=datetime.now(UTC),
            )

        await publisher.send(ENGAGEMENT_REPLY, reply("sms-SM1", "confirm"), "cust-1")
        await publisher.send(ENGAGEMENT_REPLY, reply("sms-SM1", "confirm"), "cust-1")  # again
        await publisher.send(ENGAGEMENT_REPLY, reply("sms-SM2", "callback"), "cust-1")
        await asyncio.sleep(3)  # the replies are read (and parked) first
        for st in ("sent", "delivered"):
            status = DeliveryStatus(
                message_id="m1",
                request_id="r1",
                campaign_id=cid,
                customer_id="cust-1",
                channel="sms",
                status=st,  # type: ignore[arg-type]
                at=datetime.now(UTC),
            )
            await publisher.send(DELIVERY_STATUS, status, "cust-1")

        async def counted() -> dict[str, object] | None:
            body = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
            sms = body["channels"].get("sms", {})
            return body if sms.get("delivered") and sms.get("engaged", 0) >= 2 else None

        await eventually(counted, within=60)
        # A reply redelivered now, after its message is known, is no second count.
        await publisher.send(ENGAGEMENT_REPLY, reply("sms-SM1", "confirm"), "cust-1")
        await publisher.send(ENGAGEMENT_REPLY, reply("sms-SM3", "other"), "cust-1")

        async def all_read() -> dict[str, object] | None:
            body = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
            return body if body["replies_by_intent"].get("other") else None

        body = await eventually(all_read, within=60)
        assert body["replies_by_intent"] == {"confirm": 1, "callback": 1, "other": 1}
        assert body["channels"]["sms"]["engaged"] == 3


async def test_call_backs_count_for_the_campaign_answered_apart_from_its_channels(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> None:
    async with (
        scheduler(infra, namespace, db_name("scheduler")) as client,
        open_publisher(infra, namespace) as publisher,
    ):
        cid = await active_campaign(client)

        def call(reply_id: str, st: str, code: str | None = None) -> DeliveryStatus:
            # As the voice sender reports a call-back asked for in answer to the SMS m1.
            return DeliveryStatus(
                message_id=f"callback-{reply_id}",
                request_id="m1",
                campaign_id=cid,
                customer_id="cust-1",
                channel="voice",
                status=st,  # type: ignore[arg-type]
                error_code=code,
                at=datetime.now(UTC),
            )

        for st in (
            call("sms-SM1", "sent"),
            call("sms-SM1", "answered"),
            call("sms-SM1", "answered"),  # redelivered: counted once
            call("web-1", "failed", "outside-window"),
        ):
            await publisher.send(DELIVERY_STATUS, st, "cust-1")

        async def counted() -> dict[str, Any] | None:
            body: dict[str, Any] = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
            return body if body["callbacks"]["failed"] else None

        body = await eventually(counted, within=60)
        await asyncio.sleep(1)
        body = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
        assert body["callbacks"] == {
            "sent": 1,
            "answered": 1,
            "failed": 1,
            "failed_by_reason": {"outside-window": 1},
        }
        # The campaign did not choose to call: its channels and failures are its messages'.
        assert body["channels"] == {} and body["failed_by_reason"] == {}


async def test_a_contact_the_dispatcher_failed_is_counted_by_its_rule(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> None:
    """Scheduler and dispatcher on one namespace: a still-applies expression that cannot be
    evaluated for the case fails the contact before any channel is chosen; a template failure
    after the channel was chosen counts in that channel too."""
    dispatcher = _dispatcher(infra, namespace, db_name)
    async with (
        scheduler(infra, namespace, db_name("scheduler")) as client,
        running(dispatcher),
        open_publisher(infra, namespace) as publisher,
    ):
        # The status is text: as a number it cannot be read.
        cid = await active_campaign(client, still_applies="int(case.status) > 0")
        await publisher.send(CONTACT_PREFERENCES, preferences("cust-f"), "cust-f")
        await publisher.change("case-f", 1, "open", ["cust-f"])
        await publisher.change("case-f", 1, "open", ["cust-f"])  # a replay
        # As the dispatcher reports a template failure on the SMS (the scheduler refuses such
        # templates at save time; a campaign saved before may still have one).
        render = DeliveryStatus(
            message_id="failed-r2",
            request_id="r2",
            campaign_id=cid,
            customer_id="cust-2",
            channel="sms",
            status="failed",
            reason="render",
            at=datetime.now(UTC),
        )
        await publisher.send(DELIVERY_STATUS, render, "cust-2")
        await publisher.send(DELIVERY_STATUS, render, "cust-2")  # redelivered

        async def counted() -> dict[str, Any] | None:
            body: dict[str, Any] = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
            return body if len(body["failed_by_reason"]) == 2 else None

        body = await eventually(counted, within=60)
        await asyncio.sleep(1)
        body = (await client.get(f"/v1/campaigns/{cid}/stats")).json()
        assert body["requested"] == 1
        assert body["failed_by_reason"] == {"still-applies": 1, "render": 1}
        assert list(body["channels"]) == ["sms"] and body["channels"]["sms"]["failed"] == 1
        assert body["suppressed_by_reason"] == {}


class _Refusing:
    """A collection whose next `n` calls of one method fail as an outage would."""

    def __init__(self, real: Any, method: str, n: int) -> None:
        self.real, self.method, self.n = real, method, n

    def __getattr__(self, name: str) -> Any:
        op = getattr(self.real, name)
        if name != self.method:
            return op

        async def refusing(*args: Any, **kwargs: Any) -> Any:
            if self.n:
                self.n -= 1
                raise AutoReconnect("primary stepped down")
            return await op(*args, **kwargs)

        return refusing


async def test_a_count_the_database_refused_is_counted_when_the_event_is_retried(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    """The consumer retries an event whose handling met a passing database error: the guard
    written before the failed count must not make the retry a duplicate."""
    db = mongo[db_name("scheduler")]
    stats = StatsRepository(db)
    status = {"campaign_id": "c1", "message_id": "m1", "channel": "sms", "reason": None}
    stats._counts.rows = _Refusing(db["stats"], "update_one", 1)  # type: ignore[assignment]
    with pytest.raises(AutoReconnect):
        await stats.status(**status, status="delivered")
    # Retried on the replica the partition moved to meanwhile, and then redelivered.
    other = StatsRepository(db)
    assert await other.status(**status, status="delivered")
    assert not await other.status(**status, status="delivered")
    # A batch of requests (one guard each, one count for all) is retried whole.
    stats._counts.rows = _Refusing(db["stats"], "update_one", 1)  # type: ignore[assignment]
    with pytest.raises(AutoReconnect):
        await stats.requested("c1", ["r1", "r2", "r3"])
    await stats.requested("c1", ["r1", "r2", "r3"])
    await stats.requested("c1", ["r1", "r2", "r3"])
    # The outage refuses taking the guard back too: this replica's retry still counts.
    stats._counts.rows = _Refusing(db["stats"], "update_one", 1)  # type: ignore[assignment]
    stats.seen = _Refusing(db["stats_seen"], "delete_many", 1)  # type: ignore[assignment]
    with pytest.raises(AutoReconnect):
        await stats.status(**status, status="sent")
    assert await stats.status(**status, status="sent")
    assert not await stats.status(**status, status="sent")
    counters = await stats.get("c1")
    assert counters["requested"] == 3
    assert counters["channels"]["sms"] == {"sent": 1, "delivered": 1}


class _LostReply:
    """A collection whose next `n` writes that change the counters are applied by the
    database, but whose answer never arrives (the connection drops on the way back)."""

    WRITES = ("bulk_write", "update_one")

    def __init__(self, real: Any, n: int) -> None:
        self.real, self.n = real, n

    def __getattr__(self, name: str) -> Any:
        op = getattr(self.real, name)
        if name not in self.WRITES:
            return op

        async def applied_then_lost(*args: Any, **kwargs: Any) -> Any:
            result = await op(*args, **kwargs)
            if name == "bulk_write":
                applied = result.matched_count or result.upserted_count
            else:
                applied = result.matched_count or result.upserted_id is not None
            if self.n and applied:
                self.n -= 1
                raise AutoReconnect("connection closed")
            return result

        return applied_then_lost


async def test_a_count_applied_but_whose_answer_was_lost_is_not_counted_again_on_retry(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    """The consumer retries an event whose count met a dropped connection: the database may
    have applied the count already, and the retry must not add it a second time."""
    db = mongo[db_name("scheduler")]
    stats = StatsRepository(db)
    status = {"campaign_id": "c1", "message_id": "m1", "channel": "sms", "reason": None}
    stats._counts.rows = _LostReply(db["stats"], 1)  # type: ignore[assignment]
    with pytest.raises(AutoReconnect):
        await stats.status(**status, status="delivered")
    # Retried here (the guard was taken back), then redelivered.
    assert await stats.status(**status, status="delivered")
    assert not await stats.status(**status, status="delivered")

    # Retried on the replica the partition moved to, together with a new event that joins
    # the same update of the campaign's counters.
    stats._counts.rows = _LostReply(db["stats"], 1)  # type: ignore[assignment]
    with pytest.raises(AutoReconnect):
        await stats.status(**status, status="sent")
    other = StatsRepository(db)
    retried, new = await asyncio.gather(
        other.status(**status, status="sent"),
        other.status(**{**status, "message_id": "m2"}, status="sent"),
    )
    assert retried and new

    # A batch of requests (one guard each, one count for all) is retried whole.
    stats._counts.rows = _LostReply(db["stats"], 1)  # type: ignore[assignment]
    with pytest.raises(AutoReconnect):
        await stats.requested("c1", ["r1", "r2", "r3"])
    await stats.requested("c1", ["r1", "r2", "r3"])
    await stats.requested("c1", ["r1", "r2", "r3", "r4"])

    # The outage refuses taking the guard back too: this replica's retry is still counted once.
    stats._counts.rows = _LostReply(db["stats"], 1)  # type: ignore[assignment]
    stats.seen = _Refusing(db["stats_seen"], "delete_many", 1)  # type: ignore[assignment]
    with pytest.raises(AutoReconnect):
        await stats.status(**status, status="failed")
    assert await stats.status(**status, status="failed")

    counters = await stats.get("c1")
    assert counters["requested"] == 4
    assert counters["channels"]["sms"] == {"delivered": 1, "sent": 2, "failed": 1}


class _Reads:
    """A collection that keeps the documents its `find_one` calls return."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.docs: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def find_one(self, *args: Any, **kwargs: Any) -> Any:
        doc = await self.real.find_one(*args, **kwargs)
        self.docs.append(doc)
        return doc


async def test_the_counters_are_read_without_the_records_of_their_counts(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    """The counter document holds a record per recent count (thousands on a busy campaign):
    reading the stats does not load them."""
    db = mongo[db_name("scheduler")]
    stats = StatsRepository(db)
    await stats.requested("c1", [f"r{i}" for i in range(50)])
    assert (await db["stats"].find_one({"_id": "c1"}) or {}).get("ops")
    reads = _Reads(db["stats"])
    stats.stats = reads  # type: ignore[assignment]
    counters = await stats.get("c1")
    assert counters["requested"] == 50
    assert reads.docs and all("ops" not in doc for doc in reads.docs)
