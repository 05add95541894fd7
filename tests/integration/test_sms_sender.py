"""sms-sender against the real broker and database and the sandbox over real HTTP."""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from twilio.request_validator import RequestValidator
from twilio_support import (
    SANDBOX_SID,
    SANDBOX_TOKEN,
    Collector,
    outbound_sms,
    producer,
    sandbox_serving,
    serving,
)

from herald_contracts import DELIVERY_STATUS, ENGAGEMENT_REPLY, OUTBOUND_SMS, utc_now
from herald_kit import EventProducer, TraceContext
from herald_kit._context import trace_var
from herald_sms_sender.app import create_app as sms_app
from herald_sms_sender.config import Settings as SmsSettings
from herald_sms_sender.domain.keywords import number_key
from support import eventually, free_port, unique_phone


@dataclass
class Env:
    sandbox: str
    sender: str
    http: httpx.AsyncClient
    producer: EventProducer
    statuses: Collector
    replies: Collector
    ledger: Any

    async def publish(self, msg: Any) -> None:
        await self.producer.publish(OUTBOUND_SMS, msg, key=msg.customer_id)

    async def sms_to(self, phone: str) -> list[dict[str, Any]]:
        r = await self.http.get(f"{self.sandbox}/sandbox/api/sms", params={"to": phone})
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    async def behaviour(self, **kw: Any) -> dict[str, Any]:
        r = await self.http.post(f"{self.sandbox}/sandbox/api/twilio/behaviour", json=kw)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    async def rejected_429(self) -> int:
        r = await self.http.get(f"{self.sandbox}/sandbox/api/twilio/behaviour")
        return int(r.json()["rejected_429"])

    async def ledger_rows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        rows = await self.ledger.find({"_id": {"$in": ids}}).to_list(None)
        return {r["_id"]: r for r in rows}


EnvFactory = Callable[..., Any]


@pytest.fixture
async def env_factory(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    mongo: AsyncMongoClient[dict[str, Any]],
) -> AsyncIterator[EnvFactory]:
    """Start the sandbox and an sms-sender (with given settings) on real ports."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:

        async def make(
            sandbox_settings: dict[str, Any] | None = None, **sender_settings: Any
        ) -> Env:
            sms_port = free_port()
            sender_url = f"http://127.0.0.1:{sms_port}"
            sandbox = await stack.enter_async_context(
                sandbox_serving(
                    twilio_sms_webhook_url=f"{sender_url}/webhooks/twilio/inbound",
                    **(sandbox_settings or {}),
                )
            )
            db = db_name("sms_sender")
            settings = SmsSettings(
                **{
                    "port": sms_port,
                    "public_base_url": sender_url,
                    "kafka_bootstrap": infra["kafka"],
                    "mongo_uri": infra["mongo"],
                    "mongo_db": db,
                    "topic_namespace": namespace,
                    "twilio_account_sid": SANDBOX_SID,
                    "twilio_auth_token": SANDBOX_TOKEN,
                    "twilio_base_url": sandbox,
                    **sender_settings,
                }
            )
            sender = await stack.enter_async_context(serving(sms_app(settings), sms_port))
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
            prod = await stack.enter_async_context(producer(infra["kafka"], namespace))
            statuses = await stack.enter_async_context(
                Collector(infra["kafka"], namespace, DELIVERY_STATUS)
            )
            replies = await stack.enter_async_context(
                Collector(infra["kafka"], namespace, ENGAGEMENT_REPLY)
            )
            await eventually(lambda: _ready(http, sender), within=30)
            return Env(sandbox, sender, http, prod, statuses, replies, mongo[db]["send_ledger"])

        yield make


async def _ready(http: httpx.AsyncClient, url: str) -> bool:
    return (await http.get(f"{url}/readyz")).status_code == 200


async def test_each_message_reaches_the_sandbox_once_and_delivery_is_reported(
    env_factory: EnvFactory,
) -> None:
    env: Env = await env_factory()
    phone = unique_phone()
    msgs = [outbound_sms(phone, customer_id="cust-a") for _ in range(5)]
    for m in msgs:
        await env.publish(m)
    await env.publish(msgs[0])  # a redelivery of the same message id
    ids = [m.message_id for m in msgs]

    async def all_delivered() -> bool:
        return all(env.statuses.where(message_id=i, status="delivered") for i in ids)

    await eventually(all_delivered, within=30)
    await asyncio.sleep(0.5)
    got = Tally(item["body"] for item in await env.sms_to(phone))
    assert got == Tally(m.body for m in msgs)
    sent = env.statuses.where(status="sent")
    # Statuses are at-least-once (a redelivered message re-publishes its status under the same
    # event id, which consumers dedupe on); the provider saw each message once (above).
    assert {s.message_id for s in sent} == set(ids)
    assert all(s.provider_id and s.provider_id.startswith("SM") for s in sent)


async def test_pacing_holds_the_providers_rate_without_a_429(env_factory: EnvFactory) -> None:
    env: Env = await env_factory(rate_per_second=20.0, rate_burst=1)
    # The provider's limit is the same rate; its small burst absorbs scheduling jitter on a busy
    # machine (an unpaced sender blows through it: see the next test).
    await env.behaviour(rate_per_number=20, burst=4)
    phone = unique_phone()
    msgs = [outbound_sms(phone, customer_id=f"cust-{i}") for i in range(40)]
    for m in msgs:
        await env.publish(m)
    ids = [m.message_id for m in msgs]

    async def all_sent() -> bool:
        rows = await env.ledger_rows(ids)
        return len(rows) == len(ids) and all(r["status"] == "sent" for r in rows.values())

    await eventually(all_sent, within=40)
    assert len(await env.sms_to(phone)) == 40
    assert await env.rejected_429() == 0


async def test_without_pacing_the_same_load_meets_429s_yet_nothing_is_lost_or_doubled(
    env_factory: EnvFactory,
) -> None:
    env: Env = await env_factory(rate_per_second=0.0, send_backoff_seconds=0.05, send_attempts=4)
    await env.behaviour(rate_per_number=20, burst=2)
    phone = unique_phone()
    msgs = [outbound_sms(phone, customer_id=f"cust-{i}") for i in range(40)]
    for m in msgs:
        await env.publish(m)
    ids = [m.message_id for m in msgs]

    async def all_final() -> bool:
        rows = await env.ledger_rows(ids)
        return len(rows) == len(ids) and all(
            r["status"] in ("sent", "failed") for r in rows.values()
        )

    await eventually(all_final, within=60)
    rows = await env.ledger_rows(ids)
    sent = [m for m in msgs if rows[m.message_id]["status"] == "sent"]
    assert Tally(i["body"] for i in await env.sms_to(phone)) == Tally(m.body for m in sent)
    assert all(r["error_code"] == "20429" for r in rows.values() if r["status"] == "failed")
    assert await env.rejected_429() > 0


async def test_faults_every_message_ends_sent_or_failed_none_lost_none_doubled(
    env_factory: EnvFactory,
) -> None:
    env: Env = await env_factory(
        twilio_timeout_seconds=0.5,
        send_backoff_seconds=0.05,
        send_backoff_cap_seconds=0.5,
        send_attempts=8,
        breaker_threshold=1000,
    )
    phone, hard = unique_phone(), unique_phone()
    # 20% 503s and timeouts for everyone; one number almost always answered 503, so that some
    # messages exhaust their attempts and end failed.
    await env.behaviour(
        faults=[
            {"kind": "unavailable", "share": 0.1},
            {"kind": "timeout", "share": 0.1},
            {"kind": "unavailable", "share": 0.9, "to_prefix": hard},
        ],
        timeout_seconds=1.0,
        seed=7,
    )
    msgs = [outbound_sms(phone, customer_id=f"cust-{i % 7}") for i in range(60)]
    msgs += [outbound_sms(hard, customer_id=f"cust-h{i % 3}") for i in range(12)]
    for m in msgs:
        await env.publish(m)
    ids = [m.message_id for m in msgs]

    async def all_final() -> bool:
        rows = await env.ledger_rows(ids)
        return len(rows) == len(ids) and all(
            r["status"] in ("sent", "failed") for r in rows.values()
        )

    await eventually(all_final, within=90)
    rows = await env.ledger_rows(ids)
    bodies = Tally(item["body"] for item in await env.sms_to(phone))
    bodies += Tally(item["body"] for item in await env.sms_to(hard))
    assert max(bodies.values()) == 1, "a message reached the provider twice"
    for m in msgs:
        row = rows[m.message_id]
        if row["status"] == "sent":
            assert bodies[m.body] == 1, "a message reported sent is not at the provider once"
        else:
            assert row.get("reason") and row.get("error_code")
            # A timeout may have let it through: 'failed' must mean nothing went out.
            assert bodies[m.body] == 0, "a message reported failed reached the provider"
    assert set(bodies) <= {m.body for m in msgs}
    assert any(rows[m.message_id]["status"] == "failed" for m in msgs if m.to == hard)
    finals = {s.message_id for s in env.statuses.items if s.status in ("sent", "failed")}
    await eventually(lambda: {s.message_id for s in env.statuses.items} >= set(ids), within=10)
    finals = {s.message_id for s in env.statuses.items if s.status in ("sent", "failed")}
    assert finals == set(ids)
    assert sum(r["status"] == "sent" for r in rows.values()) > len(ids) // 2


def _sign(url: str, params: dict[str, str]) -> str:
    return str(RequestValidator(SANDBOX_TOKEN).compute_signature(url, params))


async def test_unsigned_or_tampered_webhooks_get_403_and_publish_nothing(
    env_factory: EnvFactory,
) -> None:
    env: Env = await env_factory()
    phone = unique_phone()
    msg = outbound_sms(phone, customer_id="cust-w")
    await env.publish(msg)
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="delivered"))
    before_status, before_replies = len(env.statuses.items), len(env.replies.items)

    url = f"{env.sender}/webhooks/twilio/inbound"
    params = {"MessageSid": "SMx1", "From": phone, "To": "+15005550006", "Body": "STOP"}
    r = await env.http.post(url, data=params)
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    good = _sign(url, params)
    r = await env.http.post(url, data={**params, "Body": "1"}, headers={"X-Twilio-Signature": good})
    assert r.status_code == 403
    status_url = f"{env.sender}/webhooks/twilio/status?mid={msg.message_id}"
    sparams = {"MessageSid": "SMx", "MessageStatus": "failed"}
    r = await env.http.post(
        status_url, data=sparams, headers={"X-Twilio-Signature": _sign(status_url + "x", sparams)}
    )
    assert r.status_code == 403

    # Signed but malformed or about an unknown message: a clear 4xx, nothing published.
    r = await env.http.post(
        status_url,
        content=b'{"MessageStatus": "failed"}',
        headers={"Content-Type": "application/json", "X-Twilio-Signature": "x"},
    )
    assert r.status_code == 400
    missing = {"MessageSid": "SMx"}
    r = await env.http.post(
        status_url, data=missing, headers={"X-Twilio-Signature": _sign(status_url, missing)}
    )
    assert r.status_code == 400 and r.json()["field"] == "MessageStatus"
    unknown_url = f"{env.sender}/webhooks/twilio/status?mid=nope"
    r = await env.http.post(
        unknown_url, data=sparams, headers={"X-Twilio-Signature": _sign(unknown_url, sparams)}
    )
    assert r.status_code == 404
    # An intermediate status changes nothing and is not looked up: acknowledged as it is.
    interim = {"MessageSid": "SMx", "MessageStatus": "sent"}
    r = await env.http.post(
        unknown_url, data=interim, headers={"X-Twilio-Signature": _sign(unknown_url, interim)}
    )
    assert r.status_code == 204
    r = await env.http.post(
        url,
        content=b"Body=" + b"x" * 2_000_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413
    await asyncio.sleep(1)
    assert len(env.statuses.items) == before_status
    assert len(env.replies.items) == before_replies
    assert (await env.ledger_rows([msg.message_id]))[msg.message_id]["status"] == "sent"


async def test_behind_a_proxy_signatures_are_checked_over_the_public_url(
    env_factory: EnvFactory,
) -> None:
    """Twilio signs the URL it called (the proxy's), not the address the sender listens on."""
    public = "https://hooks.example.com/base"
    # The sandbox cannot reach the public URL, so it sends no callbacks; the test posts them.
    env: Env = await env_factory({"twilio_callbacks": False}, public_base_url=public)
    phone = unique_phone()
    msg = outbound_sms(phone, customer_id="cust-proxy")
    await env.publish(msg)
    [sent] = await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="sent"))
    inbound = {"MessageSid": "SMproxy1", "From": phone, "To": "+15005550006", "Body": "1"}
    query = f"?mid={msg.message_id}"
    status = {"MessageSid": sent.provider_id, "MessageStatus": "delivered"}
    hooks = (("/webhooks/twilio/inbound", inbound), (f"/webhooks/twilio/status{query}", status))

    for path, params in hooks:  # signed over the internal address: refused
        r = await env.http.post(
            env.sender + path,
            data=params,
            headers={"X-Twilio-Signature": _sign(env.sender + path, params)},
        )
        assert r.status_code == 403, r.text
        assert r.json()["field"] == "X-Twilio-Signature"
    await asyncio.sleep(0.5)
    assert not env.replies.items
    assert not env.statuses.where(message_id=msg.message_id, status="delivered")

    for path, params in hooks:  # signed over the public URL: accepted
        r = await env.http.post(
            env.sender + path,
            data=params,
            headers={"X-Twilio-Signature": _sign(public + path, params)},
        )
        assert r.status_code in (200, 204), r.text
    [reply] = await eventually(lambda: env.replies.where(intent="confirm"))
    assert reply.message_id == msg.message_id
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="delivered"))


async def test_each_final_status_is_one_event_however_often_it_is_called_back(
    env_factory: EnvFactory,
) -> None:
    """Twilio retries callbacks: a repeated final status is the same event again (same id), which
    consumers drop as a repeat; each distinct status is published, in the order called back."""
    env: Env = await env_factory({"twilio_callbacks": False})
    msg = outbound_sms(unique_phone(), customer_id="cust-repeat")
    await env.publish(msg)
    [sent] = await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="sent"))
    path = f"/webhooks/twilio/status?mid={msg.message_id}"

    async def callback(status: str) -> None:
        params = {"MessageSid": sent.provider_id, "MessageStatus": status}
        r = await env.http.post(
            env.sender + path,
            data=params,
            headers={"X-Twilio-Signature": _sign(env.sender + path, params)},
        )
        assert r.status_code == 204, r.text

    finals = ("delivered", "undelivered", "failed")
    metric = "herald_send_outcomes_total"
    before = {s: await _metric(env, metric, channel="sms", status=s) for s in finals}
    for status in ("delivered", "delivered", "undelivered", "delivered", "undelivered"):
        await callback(status)
    # One customer, one partition: the last publish arrives after any earlier one.
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="undelivered"))
    await callback("failed")
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="failed"))
    events = [
        (event_id, s.status)
        for event_id, s in zip(env.statuses.ids, env.statuses.items, strict=True)
        if s.message_id == msg.message_id
    ]
    assert [status for _, status in events] == [
        *("sent", "delivered", "delivered", "undelivered", "delivered", "undelivered", "failed")
    ]
    assert all(event_id == f"{msg.message_id}:{status}" for event_id, status in events)
    # Each status is counted once, the first time it is called back: a retried callback is no
    # second outcome.
    for s in finals:
        assert await _metric(env, metric, channel="sms", status=s) - before[s] == 1, s


async def test_stop_withdraws_consent_before_the_next_send(env_factory: EnvFactory) -> None:
    env: Env = await env_factory()
    # Twilio's own STOP blocking off: whatever the sender asks for now goes out, so only the
    # sender's own consent handling can hold the next message back.
    assert (await env.behaviour(enforce_opt_out=False))["enforce_opt_out"] is False
    phone = unique_phone()
    first = outbound_sms(phone, customer_id="cust-stop")
    await env.publish(first)
    await eventually(lambda: env.statuses.where(message_id=first.message_id, status="sent"))

    r = await env.http.post(
        f"{env.sandbox}/sandbox/api/twilio/inbound-sms",
        json={"from": phone, "to": "+15005550006", "body": "Stop"},
    )
    assert r.json()["status"] == 200
    # Consent is withdrawn before the webhook is answered: the reply for preferences is out and
    # the sender's own opt-out is recorded (by a hash of the number, never the number).
    reply = (await eventually(lambda: env.replies.where(intent="stop")))[0]
    assert reply.customer_id == "cust-stop" and reply.message_id == first.message_id
    assert reply.case_id == first.case_id and reply.channel == "sms"
    opt_outs = env.ledger.database["opt_outs"]
    assert await opt_outs.find_one({"_id": number_key(phone)}) is not None
    assert await opt_outs.find_one({"_id": phone}) is None

    second = outbound_sms(phone, customer_id="cust-stop")
    await env.publish(second)
    failed = await eventually(lambda: env.statuses.where(message_id=second.message_id))
    assert failed[0].status == "failed" and failed[0].error_code == "21610"
    assert failed[0].reason == "recipient texted STOP"
    # No Messages request reached the provider for it (the sandbox would have accepted one).
    assert [i["body"] for i in await env.sms_to(phone)] == [first.body]

    # START gives consent back: the next message goes out.
    await env.http.post(
        f"{env.sandbox}/sandbox/api/twilio/inbound-sms",
        json={"from": phone, "to": "+15005550006", "body": "START"},
    )
    await eventually(lambda: env.replies.where(intent="start"))
    third = outbound_sms(phone, customer_id="cust-stop")
    await env.publish(third)
    await eventually(lambda: env.statuses.where(message_id=third.message_id, status="sent"))
    assert [i["body"] for i in await env.sms_to(phone)] == [first.body, third.body]


async def test_a_stop_from_a_number_we_hold_no_send_for_reaches_every_customer_at_it(
    env_factory: EnvFactory,
) -> None:
    """A STOP whose send row is gone (rows last 30 days), or from a number never messaged,
    names no customer when it arrives. The sender still refuses the number, and each refusal
    tells preferences that this customer's SMS consent is withdrawn, so the number's opt-out
    reaches every customer who shares it, and their contact escalates to the next channel."""
    env: Env = await env_factory()
    assert (await env.behaviour(enforce_opt_out=False))["enforce_opt_out"] is False
    phone = unique_phone()
    r = await env.http.post(
        f"{env.sandbox}/sandbox/api/twilio/inbound-sms",
        json={"from": phone, "to": "+15005550006", "body": "Opt-out"},  # a STOP word, spelled so
    )
    assert r.json()["status"] == 200
    await asyncio.sleep(0.5)
    assert env.replies.where(intent="stop") == []  # no customer to name yet

    first, second = (outbound_sms(phone, customer_id=c) for c in ("cust-home-1", "cust-home-2"))
    for msg in (first, second):
        await env.publish(msg)
        failed = await eventually(lambda m=msg: env.statuses.where(message_id=m.message_id))
        assert [(s.status, s.error_code) for s in failed] == [("failed", "21610")]
    await eventually(lambda: len(env.replies.where(intent="stop")) == 2)
    replies = env.replies.where(intent="stop")
    assert sorted((x.customer_id, x.channel) for x in replies) == [
        ("cust-home-1", "sms"),
        ("cust-home-2", "sms"),
    ]
    # Not an answer to the refused message: its request must still escalate.
    assert all(x.message_id is None and x.case_id is None for x in replies)
    assert await env.sms_to(phone) == []


async def test_status_callbacks_and_replies_are_published_in_the_trace_of_the_message(
    env_factory: EnvFactory,
) -> None:
    """One contact, one trace: the provider's status callback, and the customer's answer to the
    message, come as HTTP requests of their own, but are published in the trace the outbound
    message was sent in (kept on its send-ledger row)."""
    env: Env = await env_factory({"twilio_callbacks": False})
    phone = unique_phone()
    msg = outbound_sms(phone, customer_id="cust-trace")
    trace = TraceContext.new()
    token = trace_var.set(trace)  # the dispatcher publishes the message in the contact's trace
    try:
        await env.publish(msg)
    finally:
        trace_var.reset(token)
    [sent] = await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="sent"))
    path = f"/webhooks/twilio/status?mid={msg.message_id}"

    async def callback(status: str) -> None:
        params = {"MessageSid": sent.provider_id, "MessageStatus": status}
        r = await env.http.post(
            env.sender + path,
            data=params,
            headers={"X-Twilio-Signature": _sign(env.sender + path, params)},
        )
        assert r.status_code == 204, r.text

    await callback("delivered")
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="delivered"))
    assert env.statuses.traces_where(message_id=msg.message_id) == [trace.trace_id] * 2
    inbound = f"{env.sandbox}/sandbox/api/twilio/inbound-sms"
    await env.http.post(inbound, json={"from": phone, "to": "+15005550006", "body": "1"})
    await eventually(lambda: env.replies.where(message_id=msg.message_id))
    assert env.replies.traces_where(message_id=msg.message_id) == [trace.trace_id]

    # A row sent before rows kept a trace: its callback is still published, in a trace of its
    # own (the callback request's).
    await env.ledger.update_one({"_id": msg.message_id}, {"$unset": {"traceparent": ""}})
    await callback("undelivered")
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="undelivered"))
    [late] = env.statuses.traces_where(message_id=msg.message_id, status="undelivered")
    assert late is not None and late != trace.trace_id


async def test_help_and_reply_codes(env_factory: EnvFactory) -> None:
    env: Env = await env_factory(brand="Acme Energy", help_contact="0800 123 456")
    phone = unique_phone()
    msg = outbound_sms(phone, customer_id="cust-r", locale="zh-CN")
    await env.publish(msg)
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="sent"))
    inbound = f"{env.sandbox}/sandbox/api/twilio/inbound-sms"
    r = await env.http.post(inbound, json={"from": phone, "to": "+15005550006", "body": "HELP"})
    assert "Acme Energy" in r.json()["response"] and "0800 123 456" in r.json()["response"]
    assert "STOP" in r.json()["response"]
    # In the language the SMS was written in, as is the answer to HELP asked in it.
    assert "退订" in r.json()["response"]
    r = await env.http.post(inbound, json={"from": phone, "to": "+15005550006", "body": "帮助"})
    assert "退订" in r.json()["response"] and "0800 123 456" in r.json()["response"]
    for body, intent in (
        ("1", "confirm"),
        (" 2 ", "reschedule"),
        ("3", "callback"),
        ("退订", "stop"),
    ):
        await env.http.post(inbound, json={"from": phone, "to": "+15005550006", "body": body})
        got = await eventually(lambda i=intent: env.replies.where(intent=i))  # type: ignore[misc]
        assert got[0].message_id == msg.message_id and got[0].customer_id == "cust-r"
    # A call-back asked for in reply carries the number and the campaign's window (the expiry
    # of the message it answers), within which the voice-sender must place it.
    callback = env.replies.where(intent="callback")[0]
    assert callback.callback_number == phone
    assert callback.locale == msg.locale  # the call-back speaks the language of the SMS
    # and names the campaign it answers, for which the call-back is reported (campaign stats).
    assert callback.campaign_id == msg.campaign_id
    assert msg.expires_at is not None and callback.callback_until is not None
    assert abs((callback.callback_until - msg.expires_at).total_seconds()) < 0.001  # ms stored


async def test_a_sent_message_redelivered_after_its_expiry_stays_sent_and_counts_once(
    env_factory: EnvFactory,
) -> None:
    env: Env = await env_factory()
    phone = unique_phone()
    msg = outbound_sms(phone, customer_id="cust-late", expires_at=utc_now() + timedelta(seconds=2))
    sent_before = await _metric(env, "herald_send_outcomes_total", channel="sms", status="sent")
    await env.publish(msg)
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="delivered"))
    assert msg.expires_at is not None
    await asyncio.sleep(max(0.0, (msg.expires_at - utc_now()).total_seconds()) + 0.2)

    await env.publish(msg)  # a redelivery once the message has expired
    # The settled status is published again under the same event id; nothing contradicts it.
    await eventually(lambda: len(env.statuses.where(message_id=msg.message_id, status="sent")) == 2)
    await asyncio.sleep(0.5)
    assert not env.statuses.where(message_id=msg.message_id, status="failed")
    row = (await env.ledger_rows([msg.message_id]))[msg.message_id]
    assert row["status"] == "sent" and row["provider_id"].startswith("SM")
    assert len(await env.sms_to(phone)) == 1
    # One SMS sent, one 'sent' outcome counted: the republished status is not a second one.
    sent = await _metric(env, "herald_send_outcomes_total", channel="sms", status="sent")
    assert sent - sent_before == 1


async def test_a_message_past_its_send_by_is_not_sent_and_its_call_back_window_stays(
    env_factory: EnvFactory,
) -> None:
    env: Env = await env_factory()
    # Held back (a backlog, an outage) until after the customer's window closed: not sent.
    late = outbound_sms(unique_phone(), send_by=utc_now() - timedelta(seconds=1))
    await env.publish(late)
    [failed] = await eventually(
        lambda: env.statuses.where(message_id=late.message_id, status="failed")
    )
    assert (failed.error_code, failed.reason) == ("expired", "expired before send")
    assert await env.sms_to(late.to) == []
    # One sent in time: a call-back asked for in reply has the request's expiry as its window,
    # not the close of the window the SMS had to go out in.
    phone = unique_phone()
    msg = outbound_sms(phone, send_by=utc_now() + timedelta(minutes=5))
    await env.publish(msg)
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="sent"))
    inbound = f"{env.sandbox}/sandbox/api/twilio/inbound-sms"
    await env.http.post(inbound, json={"from": phone, "to": "+15005550006", "body": "3"})
    [callback] = await eventually(lambda: env.replies.where(message_id=msg.message_id))
    assert callback.intent == "callback"
    assert msg.expires_at is not None and callback.callback_until is not None
    assert abs((callback.callback_until - msg.expires_at).total_seconds()) < 0.001


async def _metric(env: Env, name: str, **labels: str) -> float:
    """The sender's /metrics value of one series (0 when absent)."""
    text = (await env.http.get(f"{env.sender}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_breaker_opens_on_a_failing_provider_then_closes_and_nothing_is_lost(
    env_factory: EnvFactory,
) -> None:
    cooldown = 3.0
    env: Env = await env_factory(
        breaker_threshold=3,
        breaker_cooldown_seconds=cooldown,
        send_backoff_seconds=0.05,
        send_backoff_cap_seconds=0.2,
    )
    sender = {"sender": "sms-sender"}
    busy = {**sender, "outcome": "busy", "code": "20503"}
    # The registry is the process's: compare with what earlier tests left in it.
    opened_before = await _metric(env, "herald_circuit_breaker_opened_total", **sender)
    accepted = {**sender, "outcome": "accepted", "code": ""}
    accepted_before = await _metric(env, "herald_provider_requests_total", **accepted)
    busy_before = await _metric(env, "herald_provider_requests_total", **busy)
    await env.behaviour(faults=[{"kind": "unavailable", "share": 1.0}])
    phone = unique_phone()
    msgs = [outbound_sms(phone, customer_id=f"cust-b{i}") for i in range(5)]
    for m in msgs:
        await env.publish(m)

    async def state() -> float:
        return await _metric(env, "herald_circuit_breaker_state", **sender)

    async def is_open() -> bool:
        return await state() == 2.0

    await eventually(is_open, within=20, interval=0.05)
    assert await _metric(env, "herald_circuit_breaker_opened_total", **sender) > opened_before
    # Requests already in flight when it opened finish; then the provider hears nothing more
    # for the rest of the open period.
    await asyncio.sleep(0.3)
    requests = await _metric(env, "herald_provider_requests_total", **busy)
    assert requests - busy_before >= 3
    await asyncio.sleep(cooldown - 1.0)
    assert await state() == 2.0
    assert await _metric(env, "herald_provider_requests_total", **busy) == requests
    assert await _metric(env, "herald_provider_requests_total", **accepted) == accepted_before

    await env.behaviour(faults=[])  # the provider recovers
    ids = [m.message_id for m in msgs]

    async def all_sent() -> bool:
        rows = await env.ledger_rows(ids)
        return len(rows) == len(ids) and all(r["status"] == "sent" for r in rows.values())

    await eventually(all_sent, within=30)
    assert await state() == 0.0  # closed again
    assert Tally(i["body"] for i in await env.sms_to(phone)) == Tally(m.body for m in msgs)
    await eventually(
        lambda: {s.message_id for s in env.statuses.where(status="sent")} >= set(ids), within=10
    )
    assert not [s for s in env.statuses.items if s.status == "failed"]


async def test_retries_stop_at_the_expiry_and_the_message_fails_with_a_reason(
    env_factory: EnvFactory,
) -> None:
    env: Env = await env_factory(
        send_attempts=50,
        send_backoff_seconds=0.2,
        send_backoff_cap_seconds=0.4,
        breaker_threshold=1000,
    )
    phone = unique_phone()
    await env.behaviour(faults=[{"kind": "unavailable", "share": 1.0, "to_prefix": phone}])
    busy = {"sender": "sms-sender", "outcome": "busy", "code": "20503"}
    before = await _metric(env, "herald_provider_requests_total", **busy)
    msg = outbound_sms(phone, customer_id="cust-exp", expires_at=utc_now() + timedelta(seconds=2))
    await env.publish(msg)
    assert msg.expires_at is not None

    # 50 attempts would take ~20 s; the expiry ends them after ~2 s.
    [failed] = await eventually(
        lambda: env.statuses.where(message_id=msg.message_id, status="failed"), within=10
    )
    assert failed.error_code == "20503"
    assert failed.reason == "expired during retries (last: 20503)"
    assert failed.at <= msg.expires_at + timedelta(seconds=0.5)
    tried = await _metric(env, "herald_provider_requests_total", **busy) - before
    assert 2 <= tried < 50
    await asyncio.sleep(max(0.0, (msg.expires_at - utc_now()).total_seconds()) + 1.0)
    # Nothing more went to the provider once it had given up, nor after the expiry.
    assert await _metric(env, "herald_provider_requests_total", **busy) - before == tried
    row = (await env.ledger_rows([msg.message_id]))[msg.message_id]
    assert row["status"] == "failed" and row["reason"] == failed.reason
    assert await env.sms_to(phone) == []


async def test_a_body_twilio_refuses_as_too_long_fails_at_once_and_is_not_retried(
    env_factory: EnvFactory,
) -> None:
    # One provider failure would open the breaker: a refused message must not count as one.
    env: Env = await env_factory(breaker_threshold=1, send_backoff_seconds=0.05)
    phone = unique_phone()
    refused = {"sender": "sms-sender", "outcome": "rejected", "code": "21617"}
    before = await _metric(env, "herald_provider_requests_total", **refused)
    too_long = outbound_sms(phone, body="x" * 1601, customer_id="cust-long")
    await env.publish(too_long)

    # 'failed' with Twilio's code is what makes the dispatcher try the next channel at once.
    [failed] = await eventually(lambda: env.statuses.where(message_id=too_long.message_id))
    assert (failed.status, failed.error_code) == ("failed", "21617")
    assert failed.reason and "1600" in failed.reason
    row = (await env.ledger_rows([too_long.message_id]))[too_long.message_id]
    assert (row["status"], row["error_code"]) == ("failed", "21617")
    assert await _metric(env, "herald_provider_requests_total", **refused) - before == 1
    assert await env.sms_to(phone) == []

    # The provider is healthy: the next message goes out at once.
    short = outbound_sms(phone, customer_id="cust-long")
    await env.publish(short)
    await eventually(lambda: env.statuses.where(message_id=short.message_id, status="sent"))
    await asyncio.sleep(0.5)
    assert [s.status for s in env.statuses.where(message_id=too_long.message_id)] == ["failed"]
