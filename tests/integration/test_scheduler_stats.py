"""Campaign stats from delivery statuses and replies, each counted once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from test_scheduler_support import active_campaign, open_publisher, open_requests, scheduler

from herald_contracts import DELIVERY_STATUS, ENGAGEMENT_REPLY, DeliveryStatus, EngagementReply
from support import eventually


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
