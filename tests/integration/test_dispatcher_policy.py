"""The dispatcher alone on the real broker and database: events in, outbound/timers/DLQ out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from herald_contracts import (
    CASE_STATE,
    CONTACT_PREFERENCES,
    CONTACT_REQUESTED,
    DELIVERY_STATUS,
    ENGAGEMENT_REPLY,
    Appointment,
    CampaignRef,
    CaseState,
    ChannelAddress,
    ContactPreferences,
    ContactRequest,
    DeliveryStatus,
    EngagementReply,
    MessageTemplate,
    OutboundEmail,
    OutboundSms,
    OutboundVoice,
    QuietHours,
    TimerRequest,
    Topics,
    dlq_topic,
)
from herald_dispatcher.app import create_app
from herald_dispatcher.config import Settings
from herald_dispatcher.messaging.catchup import partitions
from herald_kit import EventProducer, LinkSigner, decode
from support import api_keys, eventually, phone_in, running, service_settings

NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@dataclass
class Clock:
    """The dispatcher's now, moved by the test."""

    now: datetime = NOON

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Harness:
    """A running dispatcher, a producer onto its topics, and what it has published."""

    http: httpx.AsyncClient
    producer: EventProducer
    clock: Clock
    db: Any = None
    records: dict[str, list[ConsumerRecord[bytes, bytes]]] = field(default_factory=dict)

    async def view_holds(self, case: CaseState) -> None:
        """Wait until the dispatcher's local view holds this case version (the test's setup)."""

        async def probe() -> bool:
            doc = await self.db["view_cases"].find_one({"_id": case.case_id})
            return doc is not None and doc["version"] >= case.version

        await eventually(probe)

    def on(self, base: str) -> list[ConsumerRecord[bytes, bytes]]:
        return self.records.setdefault(base, [])

    def sms(self, customer: str) -> list[OutboundSms]:
        found = [decode(r, OutboundSms).data for r in self.on(Topics.OUTBOUND_SMS.base)]
        return [m for m in found if m.customer_id == customer]

    def emails(self, customer: str) -> list[OutboundEmail]:
        found = [decode(r, OutboundEmail).data for r in self.on(Topics.OUTBOUND_EMAIL.base)]
        return [m for m in found if m.customer_id == customer]

    def calls(self, customer: str) -> list[OutboundVoice]:
        found = [decode(r, OutboundVoice).data for r in self.on(Topics.OUTBOUND_VOICE.base)]
        return [m for m in found if m.customer_id == customer]

    def timers(self, customer: str) -> list[TimerRequest]:
        return [
            decode(r, TimerRequest).data
            for r in self.on(Topics.TIMERS_REQUESTS.base)
            if r.key == customer.encode()
        ]

    def statuses(self, customer: str) -> list[DeliveryStatus]:
        return [
            decode(r, DeliveryStatus).data
            for r in self.on(Topics.DELIVERY_STATUS.base)
            if r.key == customer.encode()
        ]

    async def decisions(self, customer: str) -> list[dict[str, Any]]:
        r = await self.http.get(f"/v1/decisions/customers/{customer}")
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    async def decided(self, customer: str, n: int) -> list[dict[str, Any]]:
        async def probe() -> list[dict[str, Any]] | None:
            items = await self.decisions(customer)
            return items if len(items) >= n else None

        result: list[dict[str, Any]] = await eventually(probe, within=30)
        return result


async def _collect(
    kafka: str, names: dict[str, str], into: dict[str, list[ConsumerRecord[bytes, bytes]]]
) -> None:
    parts = await partitions(Settings(kafka_bootstrap=kafka), list(names.values()))
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        base_of = {name: base for base, name in names.items()}
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                for rec in recs:
                    into.setdefault(base_of[rec.topic], []).append(rec)
    finally:
        await consumer.stop()


@pytest.fixture
async def harness(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str], mongo: Any
) -> AsyncIterator[Harness]:
    database = db_name("dispatcher")
    settings = service_settings(
        Settings,
        infra,
        namespace,
        database,
        link_secret="test-link-secret",
        view_wait_seconds=1.0,
        case_wait_seconds=1.0,
        retry_attempts=1,
        critical_windows={"sms": {"start": "07:00", "end": "22:00"}},
    )
    clock = Clock()
    producer = EventProducer(settings, "test")
    await producer.start()
    watched = [
        Topics.OUTBOUND_SMS,
        Topics.OUTBOUND_EMAIL,
        Topics.OUTBOUND_VOICE,
        Topics.TIMERS_REQUESTS,
        Topics.CONTACT_REQUESTS,
        Topics.DELIVERY_STATUS,
        dlq_topic("dispatcher"),
    ]
    h = Harness(http=httpx.AsyncClient(), producer=producer, clock=clock, db=mongo[database])
    names = {t.base: t.name(namespace) for t in watched}
    task = asyncio.create_task(_collect(infra["kafka"], names, h.records))
    try:
        async with running(create_app(settings, clock=clock)) as client:
            h.http = client
            yield h
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()


def _customer(
    *,
    ranking: tuple[str, ...] = ("sms", "email", "voice"),
    tz: str = "Europe/London",
    locale: str = "en-GB",
    phone: str | None = None,
    quiet: QuietHours | None = None,
    consents: dict[str, bool] | None = None,
) -> ContactPreferences:
    number = phone or phone_in(tz)  # the windows hold where the number is too
    return ContactPreferences(
        customer_id=f"cust-{uuid.uuid4().hex[:8]}",
        version=1,
        channels={
            "sms": ChannelAddress(address=number),
            "email": ChannelAddress(address="someone@example.com"),
            "voice": ChannelAddress(address=number),
        },
        ranking=list(ranking),  # type: ignore[arg-type]
        consents={"service-updates": consents or {"sms": True, "email": True, "voice": True}},  # type: ignore[dict-item]
        locale=locale,
        time_zone=tz,
        quiet_hours=quiet,
        updated_at=NOON,
    )


def _case(customer: str, version: int, hour: int, status: str = "engineer booked") -> CaseState:
    return CaseState(
        case_id=f"case-{customer}",
        version=version,
        customer_ids=[customer],
        status=status,
        appointment=Appointment(starts_at=datetime(2026, 11, 25, hour, tzinfo=UTC)),
        updated_at=NOON - timedelta(minutes=10),
    )


MESSAGES = {
    "sms": {
        "en": MessageTemplate(
            body="Your engineer arrives at {{ case.appointment.starts_at | time }}."
        ),
        "zh": MessageTemplate(body="您的工程师将于{{ case.appointment.starts_at | time }}到达。"),
    },
    "email": {
        "en": MessageTemplate(
            subject="Case {{ case.case_id }}",
            body="Status: {{ case.status }}. {{ links.status }}",
            html="<p>{{ case.status }}</p>",
        )
    },
    "voice": {
        "en": MessageTemplate(
            body="Your engineer arrives at {{ case.appointment.starts_at | time }}."
        )
    },
}


def _campaign(**overrides: Any) -> CampaignRef:
    base: dict[str, Any] = {
        "id": f"camp-{uuid.uuid4().hex[:6]}",
        "version": 1,
        "name": "Appointments",
        "topic": "service-updates",
        "messages": MESSAGES,
    }
    base.update(overrides)
    return CampaignRef(**base)


def _own_words(n: int) -> dict[str, Any]:
    """A campaign's name and an SMS that says it, so campaigns' messages differ."""
    body = "{{ campaign.name }}: your engineer arrives at {{ case.appointment.starts_at | time }}."
    return {"name": f"Offer {n}", "messages": {"sms": {"en": MessageTemplate(body=body)}}}


def _request(
    prefs: ContactPreferences, campaign: CampaignRef, case: CaseState | None, **kw: Any
) -> ContactRequest:
    trigger = f"{case.case_id}:{case.version}" if case else "schedule"
    return ContactRequest(
        request_id=str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"{campaign.id}|{trigger}|{prefs.customer_id}")
        ),
        campaign=campaign,
        customer_id=prefs.customer_id,
        case_id=case.case_id if case else None,
        case_version=case.version if case else None,
        case_state=case,
        trigger_key=trigger,
        requested_at=NOON,
        **kw,
    )


def _status_of(sms: OutboundSms, status: str) -> DeliveryStatus:
    """A provider's status of an SMS the dispatcher emitted."""
    return DeliveryStatus(
        message_id=sms.message_id,
        request_id=sms.request_id,
        campaign_id=sms.campaign_id,
        customer_id=sms.customer_id,
        case_id=sms.case_id,
        channel="sms",
        status=status,
        at=NOON,
    )


async def _publish(h: Harness, *events: Any) -> None:
    for ev in events:
        if isinstance(ev, ContactPreferences):
            await h.producer.publish(CONTACT_PREFERENCES, ev, key=ev.customer_id)
        elif isinstance(ev, CaseState):
            await h.producer.publish(CASE_STATE, ev, key=ev.case_id)
        elif isinstance(ev, ContactRequest):
            await h.producer.publish(CONTACT_REQUESTED, ev, key=ev.customer_id)
        elif isinstance(ev, DeliveryStatus):
            await h.producer.publish(DELIVERY_STATUS, ev, key=ev.customer_id)
        elif isinstance(ev, EngagementReply):
            await h.producer.publish(ENGAGEMENT_REPLY, ev, key=ev.customer_id)
        else:
            raise TypeError(type(ev))


async def test_delayed_send_uses_latest_state_and_sends_once(harness: Harness) -> None:
    h = harness
    prefs = _customer()
    campaign = _campaign()
    v1, v2 = _case(prefs.customer_id, 1, 14), _case(prefs.customer_id, 2, 16)
    await _publish(h, prefs, v1, v2)
    await h.view_holds(v2)
    # The request fired for version 1 arrives after the case moved to version 2 ...
    await _publish(h, _request(prefs, campaign, v1))
    # ... and the request fired for version 2 arrives after it.
    await _publish(h, _request(prefs, campaign, v2))
    decisions = await h.decided(prefs.customer_id, 2)
    assert [(d["outcome"], d["rule"]) for d in decisions] == [
        ("sent", "ranked"),
        ("suppressed", "superseded"),
    ]
    assert decisions[0]["inputs"]["case_version"] == 2
    sms = await eventually(lambda: h.sms(prefs.customer_id))
    assert len(sms) == 1
    assert sms[0].body == "Your engineer arrives at 16:00."


async def test_a_request_decided_again_after_a_crash_is_still_sent_not_superseded(
    harness: Harness,
) -> None:
    h = harness
    prefs = _customer()
    campaign = _campaign()
    v1 = _case(prefs.customer_id, 1, 14)
    request = _request(prefs, campaign, v1)
    await _publish(h, prefs, v1)
    await h.view_holds(v1)
    await _publish(h, request)
    [first] = await h.decided(prefs.customer_id, 1)
    assert (first["outcome"], first["rule"]) == ("sent", "ranked")
    # A crash after the emission, before the decision was recorded: the claim stays, the
    # decision is gone, and the request comes again (its offset was never committed).
    removed = await h.db["decisions"].delete_many({"request_id": request.request_id})
    assert removed.deleted_count == 1
    await _publish(h, request)
    [again] = await h.decided(prefs.customer_id, 1)
    # The customer heard of version 1 from this very request: not "already told", but sent,
    # with the same message id (the sender's ledger sends it once).
    assert (again["outcome"], again["rule"]) == ("sent", "ranked")
    assert again["message_id"] == first["message_id"]
    assert {m.message_id for m in await eventually(lambda: h.sms(prefs.customer_id))} == {
        first["message_id"]
    }


async def test_older_request_is_superseded_by_a_newer_one(harness: Harness) -> None:
    h = harness
    prefs = _customer()
    campaign = _campaign()
    v1, v2 = _case(prefs.customer_id, 1, 14), _case(prefs.customer_id, 2, 16)
    await _publish(h, prefs, v1, v2, _request(prefs, campaign, v2), _request(prefs, campaign, v1))
    decisions = await h.decided(prefs.customer_id, 2)
    assert [(d["outcome"], d["rule"]) for d in decisions] == [
        ("sent", "ranked"),
        ("suppressed", "superseded"),
    ]
    assert len(h.sms(prefs.customer_id)) == 1


async def test_case_resolved_before_send_is_suppressed_with_reason(harness: Harness) -> None:
    h = harness
    prefs = _customer()
    campaign = _campaign(still_applies='case.status != "resolved"')
    v1 = _case(prefs.customer_id, 1, 14)
    resolved = _case(prefs.customer_id, 2, 14, status="resolved")
    await _publish(h, prefs, v1, resolved)
    await h.view_holds(resolved)
    await _publish(h, _request(prefs, campaign, v1))
    [decision] = await h.decided(prefs.customer_id, 1)
    assert (decision["outcome"], decision["rule"]) == ("suppressed", "still-applies")
    assert "case moved on" in decision["detail"]
    r = await h.http.get(f"/v1/decisions/cases/{v1.case_id}")
    assert r.json()["items"][0]["rule"] == "still-applies"
    assert h.sms(prefs.customer_id) == []


async def test_request_naming_newer_case_version_waits_for_the_view(harness: Harness) -> None:
    h = harness
    prefs = _customer()
    campaign = _campaign()
    v1, v2 = _case(prefs.customer_id, 1, 14), _case(prefs.customer_id, 2, 16)
    await _publish(h, prefs, v1)
    # The request names version 2 before the view holds it; the view catches up within the wait.
    await _publish(h, _request(prefs, campaign, v1).model_copy(update={"case_version": 2}))
    await _publish(h, v2)
    [decision] = await h.decided(prefs.customer_id, 1)
    assert decision["inputs"]["case_version"] == 2
    sms = await eventually(lambda: h.sms(prefs.customer_id))
    assert sms[0].body == "Your engineer arrives at 16:00."


async def test_sms_failure_escalates_to_email_then_voice_after_timeout(harness: Harness) -> None:
    h = harness
    prefs = _customer()
    campaign = _campaign(escalate_after_seconds=600, max_attempts=3)
    case = _case(prefs.customer_id, 1, 14)
    request = _request(prefs, campaign, case)
    await _publish(h, prefs, case, request)
    [sms] = await eventually(lambda: h.sms(prefs.customer_id))
    timers = await eventually(lambda: h.timers(prefs.customer_id))
    assert timers[0].key == f"escalate:{request.request_id}:1"
    assert timers[0].due_at == NOON + timedelta(seconds=600)

    # The SMS fails: its escalation timer is asked for again, due now (the scheduler applies
    # the campaign's gate and re-sends its request), and email goes out through the whole
    # policy again.
    await _publish(h, _status_of(sms, "undelivered"))

    def at_once() -> TimerRequest | None:
        return next((t for t in h.timers(prefs.customer_id) if t.due_at == h.clock.now), None)

    now = await eventually(at_once)
    assert (now.timer_id, now.key, now.request) == (
        timers[0].timer_id,
        timers[0].key,
        timers[0].request,
    )
    assert now.request is not None
    await h.producer.publish(CONTACT_REQUESTED, now.request, key=prefs.customer_id)
    [email] = await eventually(lambda: h.emails(prefs.customer_id))
    assert email.attempt == 2
    assert email.subject == f"Case {case.case_id}"
    token = email.text.split("http://127.0.0.1:8102/s/")[1]
    claims = LinkSigner("test-link-secret", "case-status").verify(token, max_age_seconds=60)
    # The message and campaign too: an answer on the page counts for the campaign.
    assert claims == {
        "case": case.case_id,
        "customer": prefs.customer_id,
        "locale": "en-GB",
        "tz": "Europe/London",  # the page writes times in the customer's zone
        "msg": email.message_id,
        "cmp": campaign.id,
    }
    assert email.unsubscribe_url and email.html == "<p>engineer booked</p>"

    # Nobody answers the email: the escalation timer fires (the scheduler re-sends its request).
    def email_timer() -> TimerRequest | None:
        for t in h.timers(prefs.customer_id):
            if t.key == f"escalate:{request.request_id}:2":
                return t
        return None

    timer = await eventually(email_timer)
    assert timer.request is not None and timer.request.tried_channels == ["sms", "email"]
    h.clock.now = NOON + timedelta(minutes=10)
    await h.producer.publish(CONTACT_REQUESTED, timer.request, key=prefs.customer_id)
    [call] = await eventually(lambda: h.calls(prefs.customer_id))
    assert call.attempt == 3 and call.language == "en-GB"
    assert call.say == "Your engineer arrives at 14:00."
    # Nothing is cancelled (the failure moved the first attempt's own timer to now); the last
    # attempt schedules no further escalation.
    assert not [t for t in h.timers(prefs.customer_id) if t.action == "cancel"]
    decisions = await h.decided(prefs.customer_id, 3)
    assert [d["channel"] for d in decisions if d["outcome"] == "sent"] == ["sms", "email", "voice"]
    assert not [t for t in h.timers(prefs.customer_id) if t.key.endswith(":3")]


async def test_reply_cancels_the_escalation(harness: Harness) -> None:
    h = harness
    prefs = _customer()
    campaign = _campaign(escalate_after_seconds=600, success="engaged")
    case = _case(prefs.customer_id, 1, 14)
    request = _request(prefs, campaign, case)
    await _publish(h, prefs, case, request)
    [sms] = await eventually(lambda: h.sms(prefs.customer_id))
    [timer] = await eventually(lambda: h.timers(prefs.customer_id))
    await _publish(
        h,
        EngagementReply(
            reply_id=f"r-{uuid.uuid4().hex[:6]}",
            customer_id=prefs.customer_id,
            channel="sms",
            intent="confirm",
            message_id=sms.message_id,
            at=NOON,
        ),
    )

    def cancelled() -> bool:
        return any(t.action == "cancel" and t.key == timer.key for t in h.timers(prefs.customer_id))

    await eventually(cancelled)
    # Even if the timer fired anyway (a race with the cancel), nobody is contacted again.
    assert timer.request is not None
    await h.producer.publish(CONTACT_REQUESTED, timer.request, key=prefs.customer_id)
    decisions = await h.decided(prefs.customer_id, 2)
    assert (decisions[1]["outcome"], decisions[1]["rule"]) == ("suppressed", "escalation-success")
    assert h.emails(prefs.customer_id) == []


async def test_shanghai_customer_at_2330_is_contacted_at_0800_in_chinese(harness: Harness) -> None:
    h = harness
    h.clock.now = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)  # 23:30 in Asia/Shanghai
    prefs = _customer(tz="Asia/Shanghai", locale="zh-CN", phone="+8613800138000")
    campaign = _campaign()
    case = _case(prefs.customer_id, 1, 8)  # 16:00 in Shanghai
    request = _request(prefs, campaign, case)
    await _publish(h, prefs, case, request)
    [decision] = await h.decided(prefs.customer_id, 1)
    assert (decision["outcome"], decision["rule"]) == ("deferred", "quiet-hours")
    [timer] = await eventually(lambda: h.timers(prefs.customer_id))
    assert timer.due_at == datetime(2026, 11, 25, 0, 0, tzinfo=UTC)  # 08:00 local
    assert h.sms(prefs.customer_id) == []

    # The scheduler fires the deferral at 08:00 local.
    h.clock.now = datetime(2026, 11, 25, 0, 0, 5, tzinfo=UTC)
    assert timer.request is not None
    await h.producer.publish(CONTACT_REQUESTED, timer.request, key=prefs.customer_id)
    [sms] = await eventually(lambda: h.sms(prefs.customer_id))
    assert sms.body == "您的工程师将于16:00到达。"
    assert (sms.encoding, sms.segments, sms.locale) == ("UCS-2", 1, "zh")


async def test_customer_quiet_hours_and_critical_window(harness: Harness) -> None:
    h = harness
    h.clock.now = datetime(2026, 11, 24, 21, 30, tzinfo=UTC)  # 21:30 in London
    prefs = _customer()
    case = _case(prefs.customer_id, 1, 14)
    await _publish(h, prefs, case, _request(prefs, _campaign(), case))
    [decision] = await h.decided(prefs.customer_id, 1)
    assert decision["outcome"] == "deferred"
    # A service-critical campaign may use the configured 07:00-22:00 window.
    await _publish(h, _request(prefs, _campaign(critical=True), case))
    decisions = await h.decided(prefs.customer_id, 2)
    assert (decisions[1]["outcome"], decisions[1]["channel"]) == ("sent", "sms")


async def test_frequency_cap_defers_or_suppresses(harness: Harness) -> None:
    h = harness
    prefs = _customer()
    first = _case(prefs.customer_id, 1, 14)
    marketing = {"priority": "marketing"}
    await _publish(h, prefs, first, _request(prefs, _campaign(**marketing), first))
    await h.decided(prefs.customer_id, 1)
    await _publish(h, _request(prefs, _campaign(**marketing), first))
    await _publish(h, _request(prefs, _campaign(**marketing, cap_policy="suppress"), first))
    decisions = await h.decided(prefs.customer_id, 3)
    assert [(d["outcome"], d["rule"]) for d in decisions] == [
        ("sent", "ranked"),
        ("deferred", "frequency-cap"),
        ("suppressed", "frequency-cap"),
    ]
    # Marketing allows one a day: the deferral is for when the first ages out of the day.
    assert decisions[1]["due_at"].startswith("2026-11-25T12:00")
    assert len(h.sms(prefs.customer_id)) == 1


async def test_duplicate_request_is_ignored(harness: Harness) -> None:
    h = harness
    prefs = _customer()
    case = _case(prefs.customer_id, 1, 14)
    request = _request(prefs, _campaign(), case)
    await _publish(h, prefs, case, request, request)
    decisions = await h.decided(prefs.customer_id, 2)
    assert [(d["outcome"], d["rule"]) for d in decisions] == [
        ("sent", "ranked"),
        ("ignored", "duplicate"),
    ]
    assert len(h.sms(prefs.customer_id)) == 1


async def test_no_consent_no_contact(harness: Harness) -> None:
    h = harness
    prefs = _customer(consents={"sms": False, "email": False, "voice": False})
    case = _case(prefs.customer_id, 1, 14)
    await _publish(h, prefs, case, _request(prefs, _campaign(), case))
    [decision] = await h.decided(prefs.customer_id, 1)
    assert (decision["outcome"], decision["rule"]) == ("suppressed", "channel")
    assert "sms:no-consent" in decision["detail"]


async def test_bad_requests_go_to_dlq_and_template_errors_are_decisions(harness: Harness) -> None:
    h = harness
    prefs = _customer()
    case = _case(prefs.customer_id, 1, 14)
    stranger = _customer()  # never published: unknown to the dispatcher
    await _publish(h, prefs, case)
    await _publish(h, _request(stranger, _campaign(), case))
    await _publish(h, _request(prefs, _campaign(messages={}), case))
    broken = {"sms": {"en": MessageTemplate(body="{{ case.appointment.nope.deeper }}")}}
    await _publish(h, _request(prefs, _campaign(messages=broken), case))
    await _publish(h, _request(prefs, _campaign(), case))  # the consumer carries on

    def dlq() -> list[dict[str, str]]:
        return [
            {k: v.decode() for k, v in r.headers if k.startswith("x-herald")}
            for r in h.on(dlq_topic("dispatcher").base)
        ]

    entries = await eventually(lambda: len(dlq()) >= 2 and dlq())
    reasons = {e["x-herald-field"]: e["x-herald-reason"] for e in entries}
    assert "no preferences for customer" in reasons["customer_id"]
    assert "has no messages" in reasons["campaign.messages"]
    decisions = await h.decided(prefs.customer_id, 2)
    assert (decisions[0]["outcome"], decisions[0]["rule"]) == ("failed", "render")
    assert "UndefinedError" in decisions[0]["detail"]
    assert (decisions[1]["outcome"], decisions[1]["channel"]) == ("sent", "sms")
    r = await h.http.get("/metrics")
    assert 'herald_dispatcher_decisions_total{outcome="failed",rule="render"}' in r.text


async def test_not_ready_until_views_caught_up_and_restart_resumes(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> None:
    settings = Settings(
        kafka_bootstrap=infra["kafka"],
        mongo_uri=infra["mongo"],
        mongo_db=db_name("dispatcher"),
        topic_namespace=namespace,
        api_keys=api_keys(),
        view_wait_seconds=0,  # no grace: only the catch-up gate can make this pass
        case_wait_seconds=0,
    )
    hello = _campaign(messages={"sms": {"en": MessageTemplate(body="Hello")}})
    producer = EventProducer(settings, "test")
    await producer.start()
    try:
        customers = [_customer() for _ in range(150)]
        for prefs in customers:
            await producer.publish(CONTACT_PREFERENCES, prefs, key=prefs.customer_id)
        clock = Clock()
        async with running(create_app(settings, clock=clock)) as http:
            r = await http.get("/readyz")
            assert r.json()["checks"]["views-caught-up"] is True
            last = customers[-1]
            await producer.publish(
                CONTACT_REQUESTED, _request(last, hello, None), key=last.customer_id
            )

            async def sent() -> bool:
                r = await http.get(f"/v1/decisions/customers/{last.customer_id}")
                return [d["outcome"] for d in r.json()["items"]] == ["sent"]

            await eventually(sent)
        # A restart resumes from the committed offsets and the persisted views.
        newcomer = _customer()
        await producer.publish(CONTACT_PREFERENCES, newcomer, key=newcomer.customer_id)
        async with running(create_app(settings, clock=clock)) as http:
            first = customers[0]
            await producer.publish(
                CONTACT_REQUESTED, _request(first, hello, None), key=first.customer_id
            )
            await producer.publish(
                CONTACT_REQUESTED, _request(newcomer, hello, None), key=newcomer.customer_id
            )
            for who in (first, newcomer):

                async def decided(who: ContactPreferences = who) -> bool:
                    r = await http.get(f"/v1/decisions/customers/{who.customer_id}")
                    return [d["outcome"] for d in r.json()["items"]] == ["sent"]

                await eventually(decided)
    finally:
        await producer.stop()


async def test_expired_request_and_segment_limit(harness: Harness) -> None:
    h = harness
    prefs = _customer(locale="zh-CN", tz="Asia/Shanghai", phone="+8613800138001")
    case = _case(prefs.customer_id, 1, 8)
    at_noon_local = datetime(2026, 11, 24, 4, tzinfo=UTC)  # 12:00 in Shanghai
    expired = _request(prefs, _campaign(), case, expires_at=at_noon_local - timedelta(seconds=1))
    long_zh = {
        "sms": {
            "zh": MessageTemplate(
                body="您的工程师将于{{ case.appointment.starts_at | time }}到达。" * 6
            )
        }
    }
    too_long = _request(prefs, _campaign(messages=long_zh, sms_segment_limit=1), case)
    h.clock.now = at_noon_local
    await _publish(h, prefs, case, expired, too_long)
    decisions = await h.decided(prefs.customer_id, 2)
    assert [(d["outcome"], d["rule"]) for d in decisions] == [
        ("suppressed", "expired"),
        ("failed", "segment-limit"),
    ]
    assert "UCS-2" in decisions[1]["detail"]
    assert h.sms(prefs.customer_id) == []


async def test_delivery_ends_escalation_when_success_is_delivery(harness: Harness) -> None:
    h = harness
    prefs = _customer()
    campaign = _campaign(escalate_after_seconds=300, success="delivered")
    case = _case(prefs.customer_id, 1, 14)
    request = _request(prefs, campaign, case)
    await _publish(h, prefs, case, request)
    [sms] = await eventually(lambda: h.sms(prefs.customer_id))
    [timer] = await eventually(lambda: h.timers(prefs.customer_id))
    await _publish(h, _status_of(sms, "delivered"))
    await eventually(
        lambda: any(
            t.action == "cancel" and t.key == timer.key for t in h.timers(prefs.customer_id)
        )
    )
    assert timer.request is not None
    await h.producer.publish(CONTACT_REQUESTED, timer.request, key=prefs.customer_id)
    decisions = await h.decided(prefs.customer_id, 2)
    assert (decisions[1]["outcome"], decisions[1]["rule"]) == ("suppressed", "escalation-success")
    assert h.emails(prefs.customer_id) == []


async def test_suppressions_are_published_once_with_a_machine_readable_reason(
    harness: Harness,
) -> None:
    h = harness
    nobody = _customer(consents={"sms": False, "email": False, "voice": False})
    case = _case(nobody.customer_id, 1, 14)
    no_consent = _request(nobody, _campaign(), case)
    # Redelivered: decided once, published once (same event id).
    await _publish(h, nobody, case, no_consent, no_consent)
    await h.decided(nobody.customer_id, 2)

    capped = _customer()
    first = _case(capped.customer_id, 1, 14)
    marketing = {"priority": "marketing"}
    expired = _request(capped, _campaign(), first, expires_at=NOON - timedelta(minutes=1))
    await _publish(h, capped, first, _request(capped, _campaign(**marketing), first))
    await h.decided(capped.customer_id, 1)
    await _publish(
        h,
        _request(capped, _campaign(**marketing), first),  # deferred: not a suppression
        _request(capped, _campaign(**marketing, cap_policy="suppress"), first),
        expired,
    )
    decisions = await h.decided(capped.customer_id, 4)
    assert [d["outcome"] for d in decisions] == ["sent", "deferred", "suppressed", "suppressed"]

    async def published() -> list[DeliveryStatus] | None:
        got = h.statuses(capped.customer_id)
        return got if len(got) >= 2 and h.statuses(nobody.customer_id) else None

    await eventually(published)
    await asyncio.sleep(1)  # a second copy, if any, would be on the same partition by now
    [mine] = h.statuses(nobody.customer_id)
    assert (mine.status, mine.reason, mine.channel) == ("suppressed", "no-consent", None)
    assert mine.request_id == no_consent.request_id
    ids = [
        r.headers for r in h.on(Topics.DELIVERY_STATUS.base) if r.key == nobody.customer_id.encode()
    ]
    assert dict(ids[0])["ce_id"].decode() == mine.message_id
    got = {(s.reason, s.channel) for s in h.statuses(capped.customer_id)}
    assert got == {("frequency-cap", "sms"), ("expired", None)}
    assert all(s.status == "suppressed" for s in h.statuses(capped.customer_id))


async def test_a_campaign_that_does_not_count_towards_caps_neither_counts_nor_is_capped(
    harness: Harness,
) -> None:
    h = harness
    prefs = _customer()
    case = _case(prefs.customer_id, 1, 14)
    # Marketing allows one contact a day.
    free = {"priority": "marketing", "counts_towards_cap": False, "cap_policy": "suppress"}
    counted = {"priority": "marketing", "cap_policy": "suppress"}
    # Each campaign has its own words (the same words twice would be a repeat, not a contact).
    await _publish(h, prefs, case, _request(prefs, _campaign(**free, **_own_words(1)), case))
    await h.decided(prefs.customer_id, 1)
    # The free contact did not use the day's one: this one goes out and fills the cap ...
    await _publish(h, _request(prefs, _campaign(**counted, **_own_words(2)), case))
    await h.decided(prefs.customer_id, 2)
    # ... which a free contact is not held back by, while a counted one is.
    await _publish(h, _request(prefs, _campaign(**free, **_own_words(3)), case))
    await h.decided(prefs.customer_id, 3)
    await _publish(h, _request(prefs, _campaign(**counted, **_own_words(4)), case))
    decisions = await h.decided(prefs.customer_id, 4)
    assert [(d["outcome"], d["rule"]) for d in decisions] == [
        ("sent", "ranked"),
        ("sent", "ranked"),
        ("sent", "ranked"),
        ("suppressed", "frequency-cap"),
    ]
    assert len(h.sms(prefs.customer_id)) == 3


async def test_a_suppressed_status_does_not_escalate(harness: Harness) -> None:
    h = harness
    prefs = _customer(ranking=("sms", "email"))
    case = _case(prefs.customer_id, 1, 14)
    request = _request(prefs, _campaign(), case)
    await _publish(h, prefs, case, request)
    [sent] = await h.decided(prefs.customer_id, 1)
    # A suppressed status naming a real message id (it never would) must not count as a failure.
    await _publish(
        h,
        DeliveryStatus(
            message_id=sent["message_id"],
            request_id=request.request_id,
            campaign_id=request.campaign.id,
            customer_id=prefs.customer_id,
            status="suppressed",
            reason="frequency-cap",
            at=NOON,
        ),
        DeliveryStatus(
            message_id="other",
            request_id=request.request_id,
            campaign_id=request.campaign.id,
            customer_id=prefs.customer_id,
            channel="sms",
            status="failed",
            at=NOON,
        ),
    )
    # The failed status of an unknown message is a marker: once it is consumed, so was the other.
    await asyncio.sleep(3)
    assert h.emails(prefs.customer_id) == [] and h.timers(prefs.customer_id) == []
    assert len(await h.decisions(prefs.customer_id)) == 1


async def test_the_same_words_about_a_case_reach_the_customer_once(harness: Harness) -> None:
    h = harness
    prefs = _customer()
    case = _case(prefs.customer_id, 1, 14)
    # Two campaigns on one trigger, with the same words: one SMS, and the second is a
    # suppression the campaign's stats see with its reason.
    first, second = _campaign(), _campaign()
    await _publish(h, prefs, case, _request(prefs, first, case), _request(prefs, second, case))
    await h.decided(prefs.customer_id, 2)
    # A case update the SMS does not show (its status) tells the customer nothing new ...
    moved = _case(prefs.customer_id, 2, 14, status="engineer on the way")
    await _publish(h, moved, _request(prefs, first, moved))
    await h.decided(prefs.customer_id, 3)
    # ... a new time does, and so does going back to the first time (it is not the last SMS).
    for version, hour in ((3, 15), (4, 14)):
        update = _case(prefs.customer_id, version, hour)
        await _publish(h, update, _request(prefs, first, update))
        await h.decided(prefs.customer_id, version + 1)
    # The same words about another case are news about that case.
    other = case.model_copy(update={"case_id": f"other-{prefs.customer_id}"})
    await _publish(h, other, _request(prefs, first, other))
    decisions = await h.decided(prefs.customer_id, 6)
    assert [(d["outcome"], d["rule"], d["campaign_id"]) for d in decisions] == [
        ("sent", "ranked", first.id),
        ("suppressed", "repeated-content", second.id),
        ("suppressed", "repeated-content", first.id),
        ("sent", "ranked", first.id),
        ("sent", "ranked", first.id),
        ("sent", "ranked", first.id),
    ]
    assert "same content as the last message" in decisions[1]["detail"]
    bodies = [m.body for m in h.sms(prefs.customer_id)]
    assert bodies == [
        "Your engineer arrives at 14:00.",
        "Your engineer arrives at 15:00.",
        "Your engineer arrives at 14:00.",
        "Your engineer arrives at 14:00.",
    ]

    def suppressions() -> list[tuple[str | None, ...]] | None:
        got = [
            (s.campaign_id, s.case_id, s.reason, s.channel)
            for s in h.statuses(prefs.customer_id)
            if s.status == "suppressed"
        ]
        return got if len(got) >= 2 else None

    suppressed = await eventually(suppressions)
    assert suppressed == [
        (second.id, case.case_id, "repeated-content", "sms"),
        (first.id, case.case_id, "repeated-content", "sms"),
    ]


async def test_the_same_words_go_out_again_once_the_repeat_window_has_passed(
    harness: Harness,
) -> None:
    h = harness
    prefs = _customer()
    case = _case(prefs.customer_id, 1, 14)
    await _publish(h, prefs, case, _request(prefs, _campaign(), case))
    await h.decided(prefs.customer_id, 1)
    # A day later (the default window), a reminder in the same words is sent again.
    h.clock.now = NOON + timedelta(hours=24)
    again = _case(prefs.customer_id, 2, 14, status="engineer booked, reminder")
    await _publish(h, again, _request(prefs, _campaign(), again))
    decisions = await h.decided(prefs.customer_id, 2)
    assert [d["outcome"] for d in decisions] == ["sent", "sent"]
    assert len(h.sms(prefs.customer_id)) == 2


async def test_words_that_did_not_reach_the_customer_may_be_said_again(harness: Harness) -> None:
    h = harness
    prefs = _customer(ranking=("sms",))
    case = _case(prefs.customer_id, 1, 14)
    first, second = _campaign(max_attempts=1), _campaign(max_attempts=1)
    await _publish(h, prefs, case, _request(prefs, first, case))
    [sms] = await eventually(lambda: h.sms(prefs.customer_id))
    await _publish(h, _status_of(sms, "undelivered"))
    last = h.db["last_contents"]
    key = f"{prefs.customer_id}|sms|{case.case_id}"
    await eventually(lambda: _no_row(last, key))
    # The same words from another campaign: the customer has not read them, so they go out.
    await _publish(h, _request(prefs, second, case))
    decisions = await h.decided(prefs.customer_id, 2)
    assert [(d["outcome"], d["rule"]) for d in decisions] == [("sent", "ranked")] * 2

    def both() -> list[str] | None:
        bodies = [m.body for m in h.sms(prefs.customer_id)]
        return bodies if len(bodies) == 2 else None

    assert await eventually(both) == ["Your engineer arrives at 14:00."] * 2


async def _no_row(rows: Any, key: str) -> bool:
    return await rows.find_one({"_id": key}) is None
