"""The email-sender against the real Kafka and FerretDB and the sandbox's SMTP sink."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import ssl
import subprocess
import sys
import uuid
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trustme
from aiokafka import AIOKafkaConsumer
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from herald_contracts import (
    OUTBOUND_EMAIL,
    DeliveryStatus,
    EngagementReply,
    OutboundEmail,
    Topics,
    dlq_topic,
    utc_now,
)
from herald_email_sender.adapters.ledger import BatchedLedger
from herald_email_sender.adapters.smtp import SmtpRelay
from herald_email_sender.app import create_app
from herald_email_sender.config import Settings
from herald_email_sender.sending import EmailSending
from herald_kit import EventProducer, Pacer, ServiceSettings, decode
from herald_sandbox.app import create_app as create_sandbox
from herald_sandbox.config import Settings as SandboxSettings
from support import eventually, free_port, running

LINK_SECRET = "test-link-secret"
PUBLIC = "https://mail.herald.test"


class Tail:
    """Everything published on a topic of the namespace, read in the background."""

    def __init__(self, kafka: str, topic: str) -> None:
        self.records: list[Any] = []
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka, auto_offset_reset="earliest", group_id=None
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tail:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for record in self._consumer:
            self.records.append(record)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    def statuses(self, message_id: str | None = None) -> list[DeliveryStatus]:
        """Decoded delivery statuses (of one message)."""
        out = [decode(r, DeliveryStatus).data for r in self.records]
        return [s for s in out if message_id is None or s.message_id == message_id]

    def replies(self) -> list[EngagementReply]:
        """Decoded engagement replies."""
        return [decode(r, EngagementReply).data for r in self.records]


@pytest.fixture
async def sink(infra: dict[str, str]) -> AsyncIterator[tuple[httpx.AsyncClient, int]]:
    """The sandbox (SMTP sink on a free port) and an HTTP client to its JSON API."""
    app = create_sandbox(SandboxSettings(smtp_port=0))
    async with running(app) as client:
        yield client, app.state.smtp.port


@pytest.fixture
def settings_for(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    sink: tuple[httpx.AsyncClient, int],
) -> Callable[..., Settings]:
    """email-sender settings on this test's namespace, database and sink."""
    db = db_name("email")

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap": infra["kafka"],
            "topic_namespace": namespace,
            "mongo_uri": infra["mongo"],
            "mongo_db": db,
            "smtp_host": "127.0.0.1",
            "smtp_port": sink[1],
            "smtp_security": "none",
            "link_secret": LINK_SECRET,
            "public_base_url": PUBLIC,
            "send_backoff_base_seconds": 0.05,
            "max_body_bytes": 4096,
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture
def sandbox(sink: tuple[httpx.AsyncClient, int]) -> httpx.AsyncClient:
    """The sandbox's JSON API: what the sink captured, and its rules."""
    return sink[0]


@pytest.fixture
async def statuses(infra: dict[str, str], namespace: str) -> Tail:
    """A tail of the namespace's delivery statuses, read once the test enters it."""
    return Tail(infra["kafka"], topic(namespace, Topics.DELIVERY_STATUS.base))


@pytest.fixture
async def producer(infra: dict[str, str], namespace: str) -> AsyncIterator[EventProducer]:
    """Publishes onto the test namespace, as the dispatcher would."""
    p = EventProducer(
        ServiceSettings(kafka_bootstrap=infra["kafka"], topic_namespace=namespace), "dispatcher"
    )
    await p.start()
    yield p
    await p.stop()


def outbound(**overrides: Any) -> OutboundEmail:
    """An outbound email to a unique address."""
    tag = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "message_id": f"msg-{tag}",
        "request_id": f"req-{tag}",
        "campaign_id": "camp-1",
        "customer_id": f"cust-{tag}",
        "case_id": f"case-{tag}",
        "to": f"customer-{tag}@example.com",
        "subject": "Your engineer is booked",
        "text": "Your engineer arrives at 14:00.",
        "html": "<p>Your engineer arrives at <b>14:00</b>.</p>",
        "created_at": utc_now(),
        **overrides,
    }
    return OutboundEmail(**values)


async def publish(producer: EventProducer, *msgs: OutboundEmail) -> None:
    """Put messages on outbound.email.v1."""
    for m in msgs:
        await producer.publish(OUTBOUND_EMAIL, m, key=m.customer_id, event_id=m.message_id)


async def captured(sandbox: httpx.AsyncClient, to: str | None = None) -> list[dict[str, Any]]:
    """What the sink accepted (for one address)."""
    params = {"raw": "true", **({"to": to} if to else {})}
    items: list[dict[str, Any]] = (await sandbox.get("/sandbox/api/emails", params=params)).json()[
        "items"
    ]
    return items


def topic(namespace: str, name: str) -> str:
    """A topic's full name in the namespace."""
    return f"{namespace}{name}"


async def test_email_has_rfc8058_headers_and_one_click_post_unsubscribes(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
    namespace: str,
    infra: dict[str, str],
) -> None:
    msg = outbound(topic="service-updates")
    replies = Tail(infra["kafka"], topic(namespace, Topics.ENGAGEMENT_REPLIES.base))
    async with statuses, replies, running(create_app(settings_for())) as sender:
        await publish(producer, msg)
        items = await eventually(lambda: captured(sandbox, msg.to))
        assert len(items) == 1
        email = message_from_bytes(items[0]["raw"].encode(), policy=policy.default)
        assert isinstance(email, EmailMessage)
        assert email["Subject"] == msg.subject
        assert email["To"] == msg.to
        assert email["Message-ID"].startswith("<") and email["Message-ID"].endswith(
            "@herald.example>"
        )
        assert msg.message_id not in email["Message-ID"]  # the internal id does not leak
        assert email.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in email.iter_parts()] == ["text/plain", "text/html"]
        # RFC 8058: exactly one HTTPS URI in List-Unsubscribe, and the One-Click POST header.
        assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        header = email["List-Unsubscribe"]
        assert header.startswith("<https://") and header.endswith(">") and "," not in header
        url = urlsplit(header[1:-1])
        assert url.netloc == "mail.herald.test"

        sent = await eventually(lambda: statuses.statuses(msg.message_id))
        assert [(s.status, s.channel) for s in sent] == [("sent", "email")]
        assert sent[0].provider_id == items[0]["id"]

        # A GET (a mail scanner following the link) never unsubscribes.
        r = await sender.get(url.path)
        assert r.status_code == 200 and "List-Unsubscribe" in r.text

        # The wrong body, a tampered token: refused, and nothing published.
        r = await sender.post(url.path, data={"List-Unsubscribe": "Maybe"})
        assert r.status_code == 400
        assert r.json()["field"] == "List-Unsubscribe"
        tampered = url.path[:-4] + ("AAAA" if not url.path.endswith("AAAA") else "BBBB")
        r = await sender.post(tampered, data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 403
        assert r.headers["content-type"].startswith("application/problem+json")

        r = await sender.post(url.path, data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 200, r.text
        got = await eventually(lambda: replies.replies())
        await asyncio.sleep(0.5)
        assert len(replies.replies()) == 1
        reply = got[0]
        assert (reply.intent, reply.channel, reply.customer_id) == (
            "unsubscribe",
            "email",
            msg.customer_id,
        )
        assert (reply.message_id, reply.case_id) == (msg.message_id, msg.case_id)
        # From this message's topic only: other emails (an outage notice, say) still come.
        assert reply.topic == "service-updates"


async def test_5xx_is_a_hard_bounce_and_never_retried(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    msg = outbound()
    r = await sandbox.post("/sandbox/api/emails/rules", json={"recipient": msg.to, "code": 550})
    assert r.status_code == 201
    async with statuses, running(create_app(settings_for())):
        await publish(producer, msg)
        got = await eventually(lambda: statuses.statuses(msg.message_id))
        assert [(s.status, s.error_code, s.reason) for s in got] == [
            ("failed", "smtp-550", "hard-bounce")
        ]
    rules = (await sandbox.get("/sandbox/api/emails/rules")).json()["items"]
    assert rules[0]["hits"] == 1
    assert await captured(sandbox, msg.to) == []


async def test_a_5xx_about_the_message_fails_it_without_calling_the_address_bounced(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    """A relay that refuses the content (or a policy refusal at RCPT) says nothing about the
    address: the message fails with the codes, and the reason is not a hard bounce, which
    would stop email to that customer for good."""
    spam, denied = outbound(), outbound()
    rules = [
        {"recipient": spam.to, "code": 554, "stage": "data", "message": "5.7.1 Rejected as spam"},
        {"recipient": denied.to, "code": 550, "message": f"5.7.1 <{denied.to}>: Relaying denied"},
    ]
    for rule in rules:
        assert (await sandbox.post("/sandbox/api/emails/rules", json=rule)).status_code == 201
    async with statuses, running(create_app(settings_for())):
        await publish(producer, spam)
        await publish(producer, denied)
        for msg in (spam, denied):
            await eventually(lambda msg=msg: statuses.statuses(msg.message_id))
        await asyncio.sleep(0.3)
        got = [statuses.statuses(msg.message_id) for msg in (spam, denied)]
    assert [[(s.status, s.error_code, s.reason) for s in g] for g in got] == [
        [("failed", "smtp-554", "relay refused the message: 554 5.7.1 at DATA")],
        [("failed", "smtp-550", "relay refused the message: 550 5.7.1 at RCPT")],
    ]
    items = (await sandbox.get("/sandbox/api/emails/rules")).json()["items"]
    assert [r["hits"] for r in items] == [1, 1]  # permanent: never retried


async def _breaker_openings(sender: httpx.AsyncClient) -> float:
    text = (await sender.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "herald_circuit_breaker_opened_total" and sample.labels == {
                "sender": "email-sender"
            }:
                return float(sample.value)
    return 0.0


async def test_recipients_refused_at_rcpt_do_not_hold_other_email_but_relay_refusals_do(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    """Full mailboxes (552 5.2.2) and other refusals of one recipient at RCPT say the relay
    works: the next customer's email goes out at once. A policy refusal (5.7.1) is the
    relay's, and enough of them in a row open its circuit breaker."""
    customer = f"cust-{uuid.uuid4().hex[:8]}"  # one customer: its emails go in this order
    full = [outbound(customer_id=customer) for _ in range(3)]
    moved = outbound(customer_id=customer)
    good = outbound(customer_id=customer)
    denied = [outbound(customer_id=customer) for _ in range(2)]
    rules = [
        *({"recipient": m.to, "code": 552, "message": "5.2.2 Mailbox full"} for m in full),
        {"recipient": moved.to, "code": 550, "message": "5.1.6 Mailbox moved"},
        *({"recipient": m.to, "code": 554, "message": "5.7.1 Relay access denied"} for m in denied),
    ]
    for rule in rules:
        assert (await sandbox.post("/sandbox/api/emails/rules", json=rule)).status_code == 201
    settings = settings_for(breaker_threshold=2, breaker_cooldown_seconds=60)
    async with statuses, running(create_app(settings)) as sender:
        opened = await _breaker_openings(sender)
        await publish(producer, *full, moved, good)
        # With the breaker open this would wait out its minute-long cool-down.
        got = await eventually(lambda: statuses.statuses(good.message_id), within=10)
        assert await _breaker_openings(sender) == opened
        await publish(producer, *denied)
        await eventually(lambda: statuses.statuses(denied[-1].message_id))
        assert await _breaker_openings(sender) == opened + 1
    assert [s.status for s in got] == ["sent"]
    for m in full:
        [status] = statuses.statuses(m.message_id)
        assert (status.status, status.reason) == (
            "failed",
            "relay refused the message: 552 5.2.2 at RCPT",
        )  # the address stays usable: a full mailbox is no hard bounce
    assert [s.reason for s in statuses.statuses(moved.message_id)] == ["hard-bounce"]


async def test_4xx_is_retried_then_delivered_once(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    msg = outbound()
    for stage in ("rcpt", "data"):
        r = await sandbox.post(
            "/sandbox/api/emails/rules",
            json={"recipient": msg.to, "code": 451, "stage": stage, "times": 1},
        )
        assert r.status_code == 201
    async with statuses, running(create_app(settings_for())):
        await publish(producer, msg)
        got = await eventually(lambda: statuses.statuses(msg.message_id))
        await asyncio.sleep(0.3)
        assert [s.status for s in statuses.statuses(msg.message_id)] == ["sent"]
        assert got[0].provider_id
    rules = (await sandbox.get("/sandbox/api/emails/rules")).json()["items"]
    assert [r["hits"] for r in rules] == [1, 1]
    assert len(await captured(sandbox, msg.to)) == 1


async def test_4xx_until_attempts_run_out_ends_failed_with_reason(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    msg = outbound()
    await sandbox.post("/sandbox/api/emails/rules", json={"recipient": msg.to, "code": 452})
    async with statuses, running(create_app(settings_for(send_attempts=3))):
        await publish(producer, msg)
        got = await eventually(lambda: statuses.statuses(msg.message_id))
    assert got[0].status == "failed" and got[0].error_code == "smtp-452"
    assert got[0].reason is not None and got[0].reason.startswith("retries exhausted")
    rules = (await sandbox.get("/sandbox/api/emails/rules")).json()["items"]
    assert rules[0]["hits"] == 3


async def _outcomes(sender: httpx.AsyncClient, outcome: str, code: str = "") -> float:
    """The sender's herald_email_outcomes_total for one outcome and code (0 when absent)."""
    text = (await sender.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "herald_email_outcomes_total" and sample.labels == {
                "outcome": outcome,
                "code": code,
            }:
                return float(sample.value)
    return 0.0


async def test_a_redelivered_email_repeats_its_status_but_counts_as_one_outcome(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    msg = outbound()
    async with statuses, running(create_app(settings_for())) as sender:
        before = await _outcomes(sender, "sent")
        await publish(producer, msg)
        await eventually(lambda: statuses.statuses(msg.message_id))
        await publish(producer, msg)  # redelivered (a rebalance, a restart before the commit)
        # Its recorded status is published again (a stop may have lost it), under the same id...
        await eventually(lambda: len(statuses.statuses(msg.message_id)) == 2)
        # ...but the email was sent once, and the outcome metric says so.
        assert await _outcomes(sender, "sent") - before == 1
    assert [s.status for s in statuses.statuses(msg.message_id)] == ["sent", "sent"]
    assert len(await captured(sandbox, msg.to)) == 1


async def test_exactly_once_when_the_sender_stops_mid_batch_and_restarts(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    msgs = [outbound() for _ in range(60)]
    # More messages in flight than relay connections: most wait for a connection or the pacer.
    settings = settings_for(rate_per_second=40.0, send_concurrency=16, smtp_pool_size=2)
    async with statuses:
        await publish(producer, *msgs)
        async with running(create_app(settings)):
            # Stop while the batch is being worked through (pacing keeps it in flight).
            await eventually(lambda: _count_at_least(sandbox, 10), interval=0.05)
        first_run = len(await captured(sandbox))
        assert first_run < len(msgs)
        async with running(create_app(settings)):
            ids = {m.message_id for m in msgs}

            def all_reported() -> bool:
                return {s.message_id for s in statuses.statuses()} >= ids

            await eventually(all_reported, within=40)
            await asyncio.sleep(0.5)
    _assert_exactly_once(msgs, statuses, await captured(sandbox), settings.smtp_pool_size)


def _assert_exactly_once(
    msgs: list[OutboundEmail], statuses: Tail, items: list[dict[str, Any]], in_transaction: int
) -> None:
    """Every message reached the sink exactly once and ended 'sent', except at most
    `in_transaction` (the relay connections: only a message in its SMTP transaction can be
    cut off between the relay's answer and the ledger write), which end 'unknown' and were
    never sent again."""
    at_sink = Counter(to for item in items for to in item["to"])
    assert set(at_sink) <= {m.to for m in msgs}
    assert all(n == 1 for n in at_sink.values()), "a message went out twice"
    final = {s.message_id: s.status for s in statuses.statuses()}
    assert set(final.values()) <= {"sent", "unknown"}
    unknown = [m for m in msgs if final[m.message_id] == "unknown"]
    for m in msgs:
        if final[m.message_id] == "sent":
            assert at_sink[m.to] == 1
    # Waiting for a connection or for the pacer, nothing was handed to the relay: such a
    # message is sent after the restart, not written off as 'unknown'.
    assert len(unknown) <= in_transaction, f"{len(unknown)} unknown, > {in_transaction}"


async def _count_at_least(sandbox: httpx.AsyncClient, n: int) -> bool:
    r = await sandbox.get("/sandbox/api/emails")
    return bool(r.json()["count"] >= n)


async def test_a_row_left_sending_by_a_crash_is_reported_unknown_and_not_resent(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
    mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    settings = settings_for()
    msg = outbound()
    await mongo[settings.mongo_db]["send_ledger"].insert_one(
        {"_id": msg.message_id, "status": "sending", "at": utc_now()}
    )
    async with statuses, running(create_app(settings)):
        await publish(producer, msg)
        got = await eventually(lambda: statuses.statuses(msg.message_id))
    assert got[0].status == "unknown"
    assert await captured(sandbox, msg.to) == []


async def test_ledger_queued_rows_are_reclaimed_and_only_the_last_claim_may_send(
    mongo: AsyncMongoClient[dict[str, Any]], db_name: Callable[[str], str]
) -> None:
    ledger = BatchedLedger(mongo[db_name("email")])
    now = utc_now()
    assert await ledger.claim("m-1", now=now, meta={"claim": "a"}) == (True, None)
    # Still queued (waiting for the pacer when a crash or a rebalance came): claimed again...
    assert await ledger.claim("m-1", now=now, meta={"claim": "b"}) == (True, None)
    # ...and the first claimant, once the pacer lets it go, must not send it too.
    assert await ledger.start_sending("m-1", claim="a", now=now) is False
    assert await ledger.start_sending("m-1", claim="b", now=now) is True
    # From 'sending' the relay may have it: nobody may claim it again.
    may_send, row = await ledger.claim("m-1", now=now, meta={"claim": "c"})
    assert may_send is False and row is not None and row["status"] == "sending"
    # Concurrent starts of different messages are written together, each answered right.
    for mid in ("m-2", "m-3"):
        await ledger.claim(mid, now=now, meta={"claim": mid})
    assert await asyncio.gather(
        ledger.start_sending("m-2", claim="m-2", now=now),
        ledger.start_sending("m-3", claim="stale", now=now),
    ) == [True, False]


async def test_bad_messages_go_to_the_dlq_or_fail_with_a_reason_and_the_rest_flows(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
    namespace: str,
    infra: dict[str, str],
) -> None:
    bad_address = outbound(to="not-an-address")
    expired = outbound(expires_at=utc_now() - timedelta(minutes=1))
    # Its request has not expired, but the customer's quiet hours began a minute ago.
    late = outbound(send_by=utc_now() - timedelta(minutes=1))
    good = outbound()
    dlq = Tail(infra["kafka"], dlq_topic("email-sender").name(namespace))
    async with statuses, dlq, running(create_app(settings_for())):
        await producer.send(Topics.OUTBOUND_EMAIL, b"\xff not an event", key="x", headers=[])
        await publish(producer, bad_address, expired, late, good)
        await eventually(lambda: statuses.statuses(good.message_id))
        await eventually(lambda: dlq.records)
        assert statuses.statuses(bad_address.message_id)[0].error_code == "invalid-address"
        for message in (expired, late):
            await eventually(lambda m=message: statuses.statuses(m.message_id))  # type: ignore[misc]
            assert [(s.status, s.error_code) for s in statuses.statuses(message.message_id)] == [
                ("failed", "expired")
            ]
    headers = dict(dlq.records[0].headers)
    assert headers["x-herald-error-kind"] == b"permanent"
    assert b"ce_type" in headers["x-herald-reason"]
    assert [i["to"] for i in await captured(sandbox)] == [[good.to]]


async def test_one_click_refuses_bad_input_with_problem_details(
    settings_for: Callable[..., Settings],
) -> None:
    async with running(create_app(settings_for())) as sender:
        r = await sender.post("/v1/unsubscribe/" + "x" * 40, content=b"x" * 8000)
        assert r.status_code == 413
        r = await sender.post(
            "/v1/unsubscribe/" + "x" * 40,
            content=b"{}",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400
        assert r.headers["content-type"].startswith("application/problem+json")
        r = await sender.post("/v1/unsubscribe/short", data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 422
        r = await sender.post("/v1/unsubscribe/" + "x" * 40, data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 403


def _sender_process(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """The email-sender as its own process, configured through its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is None or name == "api_keys":
            continue
        env[f"HERALD_EMAIL_SENDER_{name.upper()}"] = str(value)
    env["HERALD_EMAIL_SENDER_MONGO_URI"] = settings.mongo_uri.get_secret_value()
    env["HERALD_EMAIL_SENDER_LINK_SECRET"] = LINK_SECRET
    env["HERALD_EMAIL_SENDER_PORT"] = str(free_port())
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "herald_email_sender"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_exactly_once_when_the_sender_process_is_killed_mid_batch(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
    tmp_path: Path,
) -> None:
    msgs = [outbound() for _ in range(60)]
    # More messages in flight than relay connections: most wait for a connection or the pacer
    # when the process dies, and those were never handed to the relay.
    settings = settings_for(rate_per_second=30.0, send_concurrency=16, smtp_pool_size=2)
    async with statuses:
        await publish(producer, *msgs)
        proc = _sender_process(settings, tmp_path / "sender.log")
        try:
            await eventually(lambda: _count_at_least(sandbox, 10), within=60, interval=0.05)
        finally:
            proc.send_signal(signal.SIGKILL)  # no shutdown, no commit: a crash
            proc.wait(10)
        assert len(await captured(sandbox)) < len(msgs)
        proc = _sender_process(settings, tmp_path / "sender.log")
        try:
            ids = {m.message_id for m in msgs}
            await eventually(lambda: {s.message_id for s in statuses.statuses()} >= ids, within=90)
        finally:
            proc.kill()  # everything is reported; how it stops is not under test here
            proc.wait(10)
    _assert_exactly_once(msgs, statuses, await captured(sandbox), settings.smtp_pool_size)


async def test_injected_faults_end_every_message_sent_or_failed_once(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    msgs = [outbound() for _ in range(40)]
    # A fifth of DATA commands answer 451, a tenth of recipients 554.
    for rule in (
        {"code": 451, "stage": "data", "share": 0.2},
        {"code": 554, "stage": "rcpt", "share": 0.1},
    ):
        assert (await sandbox.post("/sandbox/api/emails/rules", json=rule)).status_code == 201
    async with statuses, running(create_app(settings_for(send_attempts=8))):
        await publish(producer, *msgs)
        ids = {m.message_id for m in msgs}
        await eventually(lambda: {s.message_id for s in statuses.statuses()} >= ids, within=60)
        await asyncio.sleep(0.5)
    outcomes = {m.message_id: statuses.statuses(m.message_id) for m in msgs}
    assert all(len(v) == 1 for v in outcomes.values()), "a message reported twice"
    recipients = [to for item in await captured(sandbox) for to in item["to"]]
    assert len(recipients) == len(set(recipients)), "a message went out twice"
    sent = {m.to for m in msgs if outcomes[m.message_id][0].status == "sent"}
    assert sent == set(recipients)
    for m in msgs:
        s = outcomes[m.message_id][0]
        assert s.status in ("sent", "failed")
        if s.status == "failed":
            assert s.error_code in ("smtp-554", "smtp-451") and s.reason
    rules = (await sandbox.get("/sandbox/api/emails/rules")).json()["items"]
    assert rules[0]["hits"] > 0  # the faults really happened


async def test_421_slows_the_relay_down_then_the_email_goes_out(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    msg = outbound()
    rule = {"recipient": msg.to, "code": 421, "message": "4.7.0 Slow down", "times": 1}
    assert (await sandbox.post("/sandbox/api/emails/rules", json=rule)).status_code == 201
    settings = settings_for(slow_down_seconds=0.3, rate_per_second=100.0)
    async with statuses, running(create_app(settings)) as sender:
        await publish(producer, msg)
        got = await eventually(lambda: statuses.statuses(msg.message_id))
        assert [s.status for s in got] == ["sent"]
        metrics = (await sender.get("/metrics")).text
    assert 'herald_email_relay_attempts_total{result="smtp-421"}' in metrics
    # The kit's pacer and provider metrics, as the SMS and voice senders export them.
    holds = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('herald_pacer_holds_total{sender="email-sender"}')
    ]
    assert holds and holds[0] >= 1  # the 421 held the relay's pacer
    assert (
        'herald_provider_requests_total{code="smtp-421",outcome="busy",sender="email-sender"}'
        in metrics
    )
    assert 'herald_provider_requests_total{code="",outcome="accepted",sender="email-sender"}' in (
        metrics
    )
    assert 'herald_circuit_breaker_state{sender="email-sender"}' in metrics
    assert len(await captured(sandbox, msg.to)) == 1


async def test_an_email_held_by_a_slow_down_past_its_deadline_is_not_sent(
    sandbox: httpx.AsyncClient,
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    # A 421 holds the relay's pacer for 8 s; the customer's window closes before that.
    settings = settings_for(slow_down_seconds=8.0, rate_per_second=100.0)
    async with statuses, running(create_app(settings)):
        msg = outbound(send_by=utc_now() + timedelta(seconds=5))
        rule = {"recipient": msg.to, "code": 421, "message": "4.7.0 Slow down", "times": 1}
        assert (await sandbox.post("/sandbox/api/emails/rules", json=rule)).status_code == 201
        await publish(producer, msg)
        got = await eventually(lambda: statuses.statuses(msg.message_id), within=30)
    assert [(s.status, s.error_code) for s in got] == [("failed", "smtp-421")]
    assert got[0].reason is not None and got[0].reason.startswith("expired while retrying")
    assert await captured(sandbox, msg.to) == []


RELAY_USER = "herald-relay"


class SecureRelay:
    """A relay that wants TLS (STARTTLS or implicit) and AUTH, its certificate from `ca`."""

    def __init__(
        self, ca: trustme.CA, *, password: str, implicit: bool = False, mechanism: str = "PLAIN"
    ) -> None:
        self.password = password
        self.implicit = implicit
        self.cert = ca.issue_cert("127.0.0.1", "localhost")
        self.mechanisms = {"LOGIN", "PLAIN"}
        self.exclude = self.mechanisms - {mechanism}
        self.received: list[tuple[list[str], bytes, bool]] = []  # (to, data, over TLS)
        self.logins: list[tuple[str, str, bool]] = []  # (mechanism, user, accepted)
        self.mail_from: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            RELAY_USER.encode(),
            self.password.encode(),
        )
        user = data.login.decode() if isinstance(data, LoginPassword) else "?"
        self.logins.append((mechanism, user, ok))
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 235 / 535

    async def handle_MAIL(  # aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.mail_from.append(address)
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(  # aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        assert server.transport is not None
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.received.append((list(envelope.rcpt_tos), envelope.original_content or b"", tls))
        return f"250 2.0.0 Ok: queued as Q{len(self.received)}"

    async def __aenter__(self) -> SecureRelay:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(server_ctx)
        loop = asyncio.get_running_loop()

        def protocol() -> SMTP:
            with warnings.catch_warnings():
                # Implicit TLS: aiosmtpd sees no TLS and warns that AUTH goes without it.
                warnings.simplefilter("ignore", UserWarning)
                return SMTP(
                    self,
                    hostname="relay.test",
                    tls_context=None if self.implicit else server_ctx,
                    require_starttls=not self.implicit,
                    auth_required=True,
                    # aiosmtpd cannot tell an implicit-TLS socket from a plain one.
                    auth_require_tls=not self.implicit,
                    auth_exclude_mechanism=self.exclude,
                    authenticator=self._authenticate,
                    loop=loop,
                )

        self._server = await loop.create_server(
            protocol,
            host="127.0.0.1",
            port=0,
            ssl=server_ctx if self.implicit else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        if hasattr(self._server, "close_clients"):  # Python 3.12+
            self._server.close_clients()
        await self._server.wait_closed()


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    """A throwaway CA and its certificate as a PEM file (what smtp_ca_file points to)."""
    authority = trustme.CA()
    path = tmp_path / "relay-ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


@pytest.mark.parametrize(
    ("security", "mechanism"), [("starttls", "LOGIN"), ("starttls", "PLAIN"), ("tls", "PLAIN")]
)
async def test_tls_and_auth_to_the_relay_deliver_the_email(
    security: str,
    mechanism: str,
    ca: tuple[trustme.CA, Path],
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    msg = outbound()
    relay = SecureRelay(ca[0], password=password, implicit=security == "tls", mechanism=mechanism)
    async with relay:
        settings = settings_for(
            smtp_port=relay.port,
            smtp_security=security,
            smtp_username=RELAY_USER,
            smtp_password=password,
            smtp_ca_file=str(ca[1]),
        )
        async with statuses, running(create_app(settings)):
            await publish(producer, msg)
            got = await eventually(lambda: statuses.statuses(msg.message_id))
    assert [(s.status, s.provider_id) for s in got] == [("sent", "Q1")]
    assert relay.logins == [(mechanism, RELAY_USER, True)]
    [(to, data, over_tls)] = relay.received
    assert to == [msg.to] and over_tls
    assert message_from_bytes(data, policy=policy.default)["Subject"] == msg.subject


async def test_wrong_relay_credentials_fail_the_email_with_a_reason_and_never_log_the_password(
    ca: tuple[trustme.CA, Path],
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"wrong-{uuid.uuid4().hex}"
    msg = outbound()
    async with SecureRelay(ca[0], password="the-right-one") as relay:
        settings = settings_for(
            smtp_port=relay.port,
            smtp_security="starttls",
            smtp_username=RELAY_USER,
            smtp_password=wrong,
            smtp_ca_file=str(ca[1]),
            send_attempts=2,
            log_level="DEBUG",
        )
        async with statuses, running(create_app(settings)):
            await publish(producer, msg)
            got = await eventually(lambda: statuses.statuses(msg.message_id))
            await asyncio.sleep(0.3)
            got = statuses.statuses(msg.message_id)
    assert [(s.status, s.error_code) for s in got] == [("failed", "smtp-auth-535")]
    assert got[0].reason is not None and "refused the credentials" in got[0].reason
    assert len(relay.logins) == 2 and not any(ok for _, _, ok in relay.logins)
    assert relay.received == [] and relay.mail_from == []
    # The password, and its base64 forms in AUTH PLAIN / AUTH LOGIN, appear in no log line.
    logs = caplog.text + capsys.readouterr().out
    assert "refused the credentials" in logs  # the failure itself was logged...
    secrets = [
        wrong,
        base64.b64encode(wrong.encode()).decode(),
        base64.b64encode(f"\0{RELAY_USER}\0{wrong}".encode()).decode(),
    ]
    assert not [s for s in secrets if s in logs]  # ...without the secret


async def test_the_relay_certificate_is_verified_unless_its_ca_is_configured(
    ca: tuple[trustme.CA, Path],
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    msg = outbound()
    async with SecureRelay(ca[0], password=password) as relay:
        # No CA file: the system store does not know the relay's CA, so nothing is sent.
        settings = settings_for(
            smtp_port=relay.port,
            smtp_security="starttls",
            smtp_username=RELAY_USER,
            smtp_password=password,
            send_attempts=2,
        )
        assert settings.smtp_ca_file is None and settings.smtp_validate_certs
        async with statuses, running(create_app(settings)):
            await publish(producer, msg)
            got = await eventually(lambda: statuses.statuses(msg.message_id))
    assert [(s.status, s.error_code) for s in got] == [("failed", "tls-untrusted")]
    assert got[0].reason is not None and "certificate" in got[0].reason
    assert relay.logins == [] and relay.received == []  # no credentials to an unverified peer


class StallingRelay:
    """A plain relay that, the first `stalls` times a command reaches `stage`, stops answering
    (the connection stays open) until the test ends. At DATA it has the message by then, as
    a relay that queued it and then hung would: it counts as received."""

    def __init__(self, *, stage: str, stalls: int) -> None:
        self.stage = stage
        self.stalls = stalls
        self.received: list[str] = []  # recipients of the messages it got
        self.rcpts: list[str] = []
        self.port = 0
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def _maybe_stall(self, stage: str) -> None:
        if stage == self.stage and self.stalls > 0:
            self.stalls -= 1
            await self._release.wait()

    async def handle_RCPT(  # aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.rcpts.append(address)
        await self._maybe_stall("rcpt")
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.received.extend(envelope.rcpt_tos)
        await self._maybe_stall("data")
        return f"250 2.0.0 Ok: queued as S{len(self.received)}"

    async def __aenter__(self) -> StallingRelay:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="stall.test", loop=loop), host="127.0.0.1", port=0
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        if hasattr(self._server, "close_clients"):  # Python 3.12+
            self._server.close_clients()
        await self._server.wait_closed()


async def test_a_relay_that_stalls_after_data_leaves_the_email_unknown_and_never_resends_it(
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    stalled, after = outbound(), outbound()
    async with StallingRelay(stage="data", stalls=1) as relay:
        settings = settings_for(
            smtp_port=relay.port, smtp_timeout_seconds=0.5, smtp_pool_size=1, send_attempts=4
        )
        async with statuses, running(create_app(settings)):
            await publish(producer, stalled)
            got = await eventually(lambda: statuses.statuses(stalled.message_id))
            await publish(producer, after)
            await eventually(lambda: statuses.statuses(after.message_id))
            # The same message delivered again (a redelivery): its outcome is repeated, the
            # email is not.
            await publish(producer, stalled)
            await eventually(lambda: len(statuses.statuses(stalled.message_id)) >= 2)
            await asyncio.sleep(0.5)
    # The relay took the message and never answered: it may have gone out, so 'unknown' with
    # the reason, never a second copy.
    assert [(s.status, s.error_code) for s in got] == [("unknown", "relay-ambiguous")]
    assert got[0].reason == "no answer to DATA within 0.5 s: the relay may have the message"
    assert {s.status for s in statuses.statuses(stalled.message_id)} == {"unknown"}
    assert [s.status for s in statuses.statuses(after.message_id)] == ["sent"]
    assert Counter(relay.received) == {stalled.to: 1, after.to: 1}


async def test_a_relay_that_stalls_before_data_is_retried_and_delivers_once(
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
) -> None:
    msg = outbound()
    async with StallingRelay(stage="rcpt", stalls=1) as relay:
        settings = settings_for(smtp_port=relay.port, smtp_timeout_seconds=0.5, send_attempts=4)
        async with statuses, running(create_app(settings)):
            await publish(producer, msg)
            await eventually(lambda: statuses.statuses(msg.message_id))
            await asyncio.sleep(0.5)
    # Nothing was handed over before DATA, so a retry is safe: sent, once.
    assert [s.status for s in statuses.statuses(msg.message_id)] == ["sent"]
    assert relay.rcpts == [msg.to, msg.to]
    assert relay.received == [msg.to]


class GatedPacer(Pacer):
    """Unpaced, but while closed every send waits for its slot (a long pacing wait)."""

    def __init__(self) -> None:
        super().__init__(0)
        self.waiting = asyncio.Event()
        self.opened = asyncio.Event()
        self.opened.set()

    async def acquire(self, identity: str) -> None:
        self.waiting.set()
        await self.opened.wait()


@pytest.mark.parametrize("trial_end", ["claimed-elsewhere", "ledger-error"])
async def test_a_trial_send_that_ends_without_the_relay_s_verdict_does_not_stall_later_email(
    trial_end: str,
    sandbox: httpx.AsyncClient,
    sink: tuple[httpx.AsyncClient, int],
    settings_for: Callable[..., Settings],
    producer: EventProducer,
    statuses: Tail,
    mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    """After an outage the breaker lets one trial email through. A trial that never reaches the
    relay (claimed by another consumer while it waited, a database error) must hand the trial
    back: the relay is healthy, so the next email goes out instead of waiting forever."""
    settings = settings_for(send_attempts=1, breaker_threshold=1, breaker_cooldown_seconds=0.2)
    ledger = BatchedLedger(mongo[settings.mongo_db])
    await ledger.ensure_indexes()
    pacer = GatedPacer()
    sending = EmailSending(
        ledger=ledger,
        # The relay is down: nothing listens there.
        relay=SmtpRelay(host="127.0.0.1", port=free_port(), security="none"),
        producer=producer,
        settings=settings,
        signer=None,
        pacer=pacer,
    )
    down, trial, after = outbound(), outbound(), outbound()
    async with statuses:
        await sending.send(down)
        assert sending.breaker.state == "open"
        sending.relay = SmtpRelay(host="127.0.0.1", port=sink[1], security="none")  # it is back
        await asyncio.sleep(0.25)  # the cool-down: the next email is the trial
        if trial_end == "claimed-elsewhere":
            pacer.opened.clear()
            task = asyncio.create_task(sending.send(trial))
            await asyncio.wait_for(pacer.waiting.wait(), timeout=10)
            # The partition moved while the trial waited for its slot: another consumer claims
            # the row, so this one must not send it.
            await ledger.claim(trial.message_id, now=utc_now(), meta={"claim": "next-consumer"})
            pacer.opened.set()
            await asyncio.wait_for(task, timeout=10)
        else:

            async def unreachable(message_id: str, *, claim: str, now: Any) -> bool:
                raise AutoReconnect("the database went away here")

            ledger.start_sending = unreachable  # type: ignore[method-assign]
            with pytest.raises(AutoReconnect):
                await sending.send(trial)
            del ledger.start_sending
        await asyncio.wait_for(sending.send(after), timeout=10)
        got = await eventually(lambda: statuses.statuses(after.message_id))
    await sending.relay.close()
    assert [s.status for s in got] == ["sent"]
    assert [i["to"] for i in await captured(sandbox)] == [[after.to]]
    assert sending.breaker.state == "closed"
