"""A provider timeout that still created the SMS or call is settled by a lookup at Twilio.

Real broker and database; the sandbox over real HTTP with its `timeout` fault, which takes the
message (places the call) and withholds the answer. The sender must find the resource in
Twilio's list, record `sent` with its sid, and never send it again, in process and across a
kill -9 and restart.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from twilio_support import (
    SANDBOX_SID,
    SANDBOX_TOKEN,
    Collector,
    outbound_sms,
    outbound_voice,
    producer,
    sandbox_serving,
    serving,
)

from herald_contracts import DELIVERY_STATUS, OUTBOUND_SMS, OUTBOUND_VOICE, utc_now
from herald_devstack import BY_NAME, Stack, StackConfig
from herald_kit import EventProducer
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.app import create_app as sms_app
from herald_sms_sender.config import Settings as SmsSettings
from herald_voice_sender.adapters.ledger import CallLedger
from herald_voice_sender.app import create_app as voice_app
from herald_voice_sender.config import Settings as VoiceSettings
from support import eventually, free_port, unique_phone

CHANNELS = {
    # channel: (sender, ledger collection, topic, sandbox list, Twilio sid prefix)
    "sms": ("sms-sender", "send_ledger", OUTBOUND_SMS, "sms", "SM"),
    "voice": ("voice-sender", "call_ledger", OUTBOUND_VOICE, "calls", "CA"),
}


def _message(channel: str, phone: str) -> Any:
    if channel == "sms":
        return outbound_sms(phone)
    return outbound_voice(phone, "Your engineer is booked for 2 pm.")


async def _timeouts(http: httpx.AsyncClient, sandbox: str, seconds: float) -> None:
    r = await http.post(
        f"{sandbox}/sandbox/api/twilio/behaviour",
        json={"faults": [{"kind": "timeout", "share": 1.0}], "timeout_seconds": seconds},
    )
    assert r.status_code == 200, r.text


async def _in_sandbox(http: httpx.AsyncClient, sandbox: str, what: str, phone: str) -> list[Any]:
    r = await http.get(f"{sandbox}/sandbox/api/{what}", params={"to": phone})
    items: list[Any] = r.json()["items"]
    return items


@dataclass
class Served:
    """A sender app and the sandbox over real HTTP, with a producer and a status collector."""

    sender: str
    sandbox: str
    http: httpx.AsyncClient
    prod: EventProducer
    statuses: Collector
    db: str


@asynccontextmanager
async def served(
    channel: str, infra: dict[str, str], namespace: str, db: str
) -> AsyncIterator[Served]:
    """The channel's sender (in process) and the sandbox on free ports."""
    async with AsyncExitStack() as stack:
        port = free_port()
        sandbox = await stack.enter_async_context(sandbox_serving())
        common: dict[str, Any] = {
            "port": port,
            "public_base_url": f"http://127.0.0.1:{port}",
            "kafka_bootstrap": infra["kafka"],
            "mongo_uri": infra["mongo"],
            "mongo_db": db,
            "topic_namespace": namespace,
            "twilio_account_sid": SANDBOX_SID,
            "twilio_auth_token": SANDBOX_TOKEN,
            "twilio_base_url": sandbox,
            "twilio_timeout_seconds": 0.5,
            "rate_per_second": 0,
        }
        app = (
            sms_app(SmsSettings(**common))
            if channel == "sms"
            else voice_app(VoiceSettings(**common))
        )
        sender = await stack.enter_async_context(serving(app, port))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        prod = await stack.enter_async_context(producer(infra["kafka"], namespace))
        statuses = await stack.enter_async_context(
            Collector(infra["kafka"], namespace, DELIVERY_STATUS)
        )

        async def ready() -> bool:
            return (await http.get(f"{sender}/readyz")).status_code == 200

        await eventually(ready, within=30)
        yield Served(sender, sandbox, http, prod, statuses, db)


@pytest.mark.parametrize("channel", ["sms", "voice"])
async def test_a_timeout_that_created_the_message_is_settled_sent_by_lookup(
    channel: str,
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    sender_name, collection, topic, what, prefix = CHANNELS[channel]
    db = db_name(sender_name.replace("-", "_"))
    async with served(channel, infra, namespace, db) as s:
        sender, sandbox, http, prod, statuses = s.sender, s.sandbox, s.http, s.prod, s.statuses
        await _timeouts(http, sandbox, 3.0)
        phone = unique_phone()
        msg = _message(channel, phone)
        await prod.publish(topic, msg, key=msg.customer_id)

        sent = await eventually(
            lambda: statuses.where(message_id=msg.message_id, status="sent"), within=30
        )
        row = await mongo[db][collection].find_one({"_id": msg.message_id})
        assert row is not None and row["status"] == "sent"
        assert row["provider_id"].startswith(prefix)
        items = await _in_sandbox(http, sandbox, what, phone)
        assert [i["sid"] for i in items] == [row["provider_id"]] == [sent[0].provider_id]
        assert not statuses.where(message_id=msg.message_id, status="unknown")
        metrics = (await http.get(f"{sender}/metrics")).text
        assert (
            f'herald_provider_requests_total{{code="timeout",outcome="timeout",sender="{sender_name}"}}'
            in metrics
        )
        assert (
            f'herald_provider_requests_total{{code="",outcome="lookup",sender="{sender_name}"}}'
            in metrics
        )


@pytest.mark.parametrize("channel", ["sms", "voice"])
async def test_a_gateway_502_after_the_provider_took_it_is_settled_sent_by_lookup_not_resent(
    channel: str,
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    """Twilio took the message (placed the call) and the proxy in front of it answered 502: a
    5xx that says nothing about the request is an unknown outcome, looked up like a timeout,
    not a refusal to send again."""
    sender_name, collection, topic, what, prefix = CHANNELS[channel]
    db = db_name(sender_name.replace("-", "_"))
    async with served(channel, infra, namespace, db) as s:
        r = await s.http.post(
            f"{s.sandbox}/sandbox/api/twilio/behaviour",
            json={"faults": [{"kind": "bad-gateway", "share": 1.0}]},
        )
        assert r.status_code == 200, r.text
        phone = unique_phone()
        msg = _message(channel, phone)
        await s.prod.publish(topic, msg, key=msg.customer_id)

        [sent] = await eventually(
            lambda: s.statuses.where(message_id=msg.message_id, status="sent"), within=30
        )
        await asyncio.sleep(0.5)
        items = await _in_sandbox(s.http, s.sandbox, what, phone)
        assert [i["sid"] for i in items] == [sent.provider_id], "sent again after the 502"
        row = await mongo[db][collection].find_one({"_id": msg.message_id})
        assert row is not None and row["status"] == "sent"
        assert row["provider_id"] == sent.provider_id and sent.provider_id.startswith(prefix)
        metrics = (await s.http.get(f"{s.sender}/metrics")).text
        assert (
            f'herald_provider_requests_total{{code="502",outcome="timeout",sender="{sender_name}"}}'
            in metrics
        )


@pytest.mark.parametrize("expired", [False, True], ids=["live", "expired"])
@pytest.mark.parametrize("channel", ["sms", "voice"])
async def test_a_row_left_sending_that_the_provider_never_saw_ends_unknown_never_resent(
    channel: str,
    expired: bool,
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    """A crash left the row 'sending'; Twilio has nothing: 'unknown', and no blind resend (also
    when the redelivery comes after the message's expiry)."""
    sender_name, collection, topic, what, _ = CHANNELS[channel]
    db = db_name(sender_name.replace("-", "_"))
    phone = unique_phone()
    msg = _message(channel, phone)
    if expired:
        msg = msg.model_copy(update={"expires_at": utc_now() - timedelta(seconds=1)})
    # The state a crash during the provider call leaves, written by the sender's own ledger.
    ledger = Ledger(mongo[db]) if channel == "sms" else CallLedger(mongo[db])
    crashed_at = utc_now() - timedelta(seconds=5)
    meta = {k: getattr(msg, k) for k in ("request_id", "campaign_id", "customer_id", "case_id")}
    assert (await ledger.claim(msg.message_id, now=crashed_at, meta={**meta, "claim": "c"}))[0]
    assert await ledger.start_sending(msg.message_id, claim="c", now=crashed_at)

    async with served(channel, infra, namespace, db) as s:
        await s.prod.publish(topic, msg, key=msg.customer_id)
        [unknown] = await eventually(
            lambda: s.statuses.where(message_id=msg.message_id, status="unknown"), within=30
        )
        assert unknown.reason == "found in 'sending' after a restart"
        row = await mongo[db][collection].find_one({"_id": msg.message_id})
        assert row is not None and row["status"] == "unknown"

        await s.prod.publish(topic, msg, key=msg.customer_id)  # redelivered again
        await eventually(
            lambda: len(s.statuses.where(message_id=msg.message_id, status="unknown")) == 2,
            within=30,
        )
        await asyncio.sleep(0.5)
        assert await _in_sandbox(s.http, s.sandbox, what, phone) == [], "sent blindly"
        assert {st.status for st in s.statuses.where(message_id=msg.message_id)} == {"unknown"}
        row = await mongo[db][collection].find_one({"_id": msg.message_id})
        assert row is not None and row["status"] == "unknown"
        metrics = (await s.http.get(f"{s.sender}/metrics")).text
        assert f'outcome="lookup",sender="{sender_name}"' in metrics


@pytest.mark.parametrize("channel", ["sms", "voice"])
async def test_killed_during_a_timed_out_request_then_restarted_settles_sent_once(
    channel: str,
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    mongo: AsyncMongoClient[dict[str, Any]],
    tmp_path: Path,
) -> None:
    sender_name, collection, topic, what, prefix = CHANNELS[channel]
    async with (
        sandbox_serving() as sandbox,
        httpx.AsyncClient(timeout=10) as http,
        producer(infra["kafka"], namespace) as prod,
        Collector(infra["kafka"], namespace, DELIVERY_STATUS) as statuses,
    ):
        db = db_name(sender_name.replace("-", "_"))
        env_prefix = BY_NAME[sender_name].env_prefix
        stack = Stack(
            StackConfig(
                kafka_bootstrap=infra["kafka"],
                mongo_uri=infra["mongo"],
                namespace=namespace,
                db_suffix=db.removeprefix("herald_" + sender_name.replace("-", "_")),
                # Service ports land in 20000-28000, away from the defaults and ephemeral ports.
                port_offset=random.randrange(12_000, 19_000),
                log_dir=tmp_path,
                extra_env={
                    f"{env_prefix}MONGO_DB": db,
                    f"{env_prefix}TWILIO_BASE_URL": sandbox,
                    f"{env_prefix}RATE_PER_SECOND": "0",
                    # Longer than the kill takes: the request is in flight when the process dies.
                    f"{env_prefix}TWILIO_TIMEOUT_SECONDS": "20",
                },
            ),
            services=[BY_NAME["sandbox"], BY_NAME[sender_name]],  # only the sender is started
        )
        await _timeouts(http, sandbox, 15.0)
        phone = unique_phone()
        msg = _message(channel, phone)
        ledger = mongo[db][collection]
        try:
            stack.start_one(sender_name)
            await asyncio.to_thread(stack.wait_ready, 60)
            await prod.publish(topic, msg, key=msg.customer_id)
            # The provider took it and the sender waits for the answer, its row in 'sending'.
            await eventually(lambda: _in_sandbox(http, sandbox, what, phone), within=30)
            row = await ledger.find_one({"_id": msg.message_id})
            assert row is not None and row["status"] == "sending"
            stack.kill(sender_name)  # SIGKILL: the offset stays uncommitted

            stack.start_one(sender_name)
            await asyncio.to_thread(stack.wait_ready, 60)

            async def settled() -> dict[str, Any] | None:
                r = await ledger.find_one({"_id": msg.message_id})
                return r if r is not None and r["status"] != "sending" else None

            row = await eventually(settled, within=60, interval=0.5)
        finally:
            stack.stop()

        items = await _in_sandbox(http, sandbox, what, phone)
        assert len(items) == 1, "sent twice"
        assert row["status"] == "sent" and row["provider_id"] == items[0]["sid"]
        assert row["provider_id"].startswith(prefix)
        sent = await eventually(
            lambda: statuses.where(message_id=msg.message_id, status="sent"), within=20
        )
        assert sent[0].provider_id == items[0]["sid"]
        assert not statuses.where(message_id=msg.message_id, status="unknown")
