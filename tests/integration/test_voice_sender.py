"""voice-sender against the real broker and database and the sandbox over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from twilio.request_validator import RequestValidator
from twilio_support import (
    SANDBOX_SID,
    SANDBOX_TOKEN,
    Collector,
    outbound_voice,
    producer,
    sandbox_serving,
    serving,
)

from herald_contracts import (
    DELIVERY_STATUS,
    ENGAGEMENT_REPLY,
    OUTBOUND_VOICE,
    EngagementReply,
    utc_now,
)
from herald_kit import EventProducer, TraceContext
from herald_kit._context import trace_var
from herald_voice_sender.app import create_app as voice_app
from herald_voice_sender.config import Settings as VoiceSettings
from herald_voice_sender.domain import ivr
from support import eventually, free_port, unique_phone

AGENT = "+15005550009"


@dataclass
class Env:
    sandbox: str
    sender: str
    http: httpx.AsyncClient
    producer: EventProducer
    statuses: Collector
    replies: Collector

    async def calls_to(self, phone: str) -> list[dict[str, Any]]:
        r = await self.http.get(f"{self.sandbox}/sandbox/api/calls", params={"to": phone})
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    async def answered_call(self, phone: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            calls = await self.calls_to(phone)
            return calls[0] if calls and calls[0]["twiml"] else None

        call: dict[str, Any] = await eventually(probe, within=30)
        return call

    async def outcomes(self, status: str) -> float:
        """The sender's herald_send_outcomes_total for voice and one status (0 when absent)."""
        text = (await self.http.get(f"{self.sender}/metrics")).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "herald_send_outcomes_total" and sample.labels == {
                    "channel": "voice",
                    "status": status,
                }:
                    return float(sample.value)
        return 0.0

    async def press(self, sid: str, digits: str = "", *, speech: str = "") -> dict[str, Any]:
        r = await self.http.post(
            f"{self.sandbox}/sandbox/api/calls/{sid}/keypad",
            json={"digits": digits, "speech": speech},
        )
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


@pytest.fixture
async def env(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> AsyncIterator[Env]:
    async with AsyncExitStack() as stack:
        port = free_port()
        sandbox = await stack.enter_async_context(sandbox_serving())
        settings = VoiceSettings(
            port=port,
            public_base_url=f"http://127.0.0.1:{port}",
            kafka_bootstrap=infra["kafka"],
            mongo_uri=infra["mongo"],
            mongo_db=db_name("voice_sender"),
            topic_namespace=namespace,
            twilio_account_sid=SANDBOX_SID,
            twilio_auth_token=SANDBOX_TOKEN,
            twilio_base_url=sandbox,
            contact_centre_number=AGENT,
            rate_per_second=0,
            # Any hour: these tests are about the call itself (calling hours have their own).
            calling_hours_start="00:00",
            calling_hours_end="00:00",
        )
        sender = await stack.enter_async_context(serving(voice_app(settings), port))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        prod = await stack.enter_async_context(producer(infra["kafka"], namespace))
        statuses = await stack.enter_async_context(
            Collector(infra["kafka"], namespace, DELIVERY_STATUS)
        )
        replies = await stack.enter_async_context(
            Collector(infra["kafka"], namespace, ENGAGEMENT_REPLY)
        )

        async def ready() -> bool:
            return (await http.get(f"{sender}/readyz")).status_code == 200

        await eventually(ready, within=30)
        yield Env(sandbox, sender, http, prod, statuses, replies)


async def test_pressing_1_confirms_in_the_customers_language(env: Env) -> None:
    phone = unique_phone()
    msg = outbound_voice(phone, "Votre technicien arrive demain à 14 heures.", language="fr-FR")
    await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)
    call = await env.answered_call(phone)
    menu = call["twiml"][0]
    assert '<Say language="fr-FR">Votre technicien arrive demain' in menu
    assert "<Gather" in menu and "Tapez 1 pour confirmer" in menu
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="answered"))

    r = await env.press(call["sid"], "1")
    assert "<Hangup" in r["twiml"]
    reply = (await eventually(lambda: env.replies.where(message_id=msg.message_id)))[0]
    assert reply.intent == "confirm" and reply.channel == "voice"
    assert reply.customer_id == msg.customer_id and reply.case_id == msg.case_id
    assert reply.campaign_id == msg.campaign_id  # a call-back asked for here is reported for it
    sent = env.statuses.where(message_id=msg.message_id, status="sent")
    assert sent and sent[0].provider_id == call["sid"]


async def test_the_calls_webhooks_publish_in_the_trace_of_the_message(env: Env) -> None:
    """One contact, one trace: Twilio's requests about a call (its answer, the callee's choice,
    its status) are published in the trace the outbound message was sent in, kept on the
    call's send-ledger row."""
    phone = unique_phone()
    msg = outbound_voice(phone, "Your engineer is booked for 2 pm.")
    trace = TraceContext.new()
    token = trace_var.set(trace)  # the dispatcher publishes the message in the contact's trace
    try:
        await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)
    finally:
        trace_var.reset(token)
    call = await env.answered_call(phone)
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="answered"))
    await env.press(call["sid"], "1")
    await eventually(lambda: env.replies.where(message_id=msg.message_id))
    url = f"{env.sender}/webhooks/twilio/voice/status?mid={msg.message_id}"
    params = {"CallSid": call["sid"], "CallStatus": "busy"}
    sig = RequestValidator(SANDBOX_TOKEN).compute_signature(url, params)
    r = await env.http.post(url, data=params, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 204, r.text
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="busy"))
    for status in ("sent", "answered", "busy"):
        traces = env.statuses.traces_where(message_id=msg.message_id, status=status)
        assert traces == [trace.trace_id], status
    assert env.replies.traces_where(message_id=msg.message_id) == [trace.trace_id]


async def test_a_call_past_its_send_by_is_not_placed(env: Env) -> None:
    # Held back (a backlog, an outage) until after the customer's window closed.
    phone = unique_phone()
    msg = outbound_voice(
        phone, "Your engineer is booked.", send_by=utc_now() - timedelta(seconds=1)
    )
    await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)
    [failed] = await eventually(
        lambda: env.statuses.where(message_id=msg.message_id, status="failed")
    )
    assert (failed.error_code, failed.reason) == ("expired", "expired before the call")
    assert not env.statuses.where(message_id=msg.message_id, status="sent")


async def test_a_redelivered_call_is_placed_once_and_counts_as_one_outcome(env: Env) -> None:
    phone = unique_phone()
    msg = outbound_voice(phone, "Your engineer is booked for 2 pm.")
    before = await env.outcomes("sent")
    await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="sent"))
    await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)  # a redelivery
    # Its recorded status is published again under the same id; the call is not placed again,
    # and the outcome metric counts one call.
    await eventually(lambda: len(env.statuses.where(message_id=msg.message_id, status="sent")) == 2)
    assert await env.outcomes("sent") - before == 1
    assert len(await env.calls_to(phone)) == 1


async def test_a_status_twilio_calls_back_twice_counts_as_one_outcome(env: Env) -> None:
    # Twilio retries a callback it did not see answered: the same status is published again
    # (same event id, which consumers drop as a repeat) but is one outcome.
    phone = unique_phone()
    r = await env.http.post(
        f"{env.sandbox}/sandbox/api/twilio/behaviour",
        json={"faults": [{"kind": "no-answer", "share": 1.0, "to_prefix": phone}]},
    )
    assert r.status_code == 200, r.text
    msg = outbound_voice(phone, "Your engineer is booked for 2 pm.")
    before = await env.outcomes("no-answer")
    await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)
    [final] = await eventually(
        lambda: env.statuses.where(message_id=msg.message_id, status="no-answer")
    )
    url = f"{env.sender}/webhooks/twilio/voice/status?mid={msg.message_id}"
    params = {"CallSid": final.provider_id or "", "CallStatus": "no-answer"}
    sig = RequestValidator(SANDBOX_TOKEN).compute_signature(url, params)
    r = await env.http.post(url, data=params, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 204, r.text
    await eventually(
        lambda: len(env.statuses.where(message_id=msg.message_id, status="no-answer")) == 2
    )
    assert await env.outcomes("no-answer") - before == 1

    # The same for the answer the TwiML request reports.
    phone = unique_phone()
    msg = outbound_voice(phone, "Your engineer is booked for 2 pm.")
    before = await env.outcomes("answered")
    await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)
    call = await env.answered_call(phone)
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="answered"))
    url = f"{env.sender}/webhooks/twilio/voice/twiml?mid={msg.message_id}"
    params = {"CallSid": call["sid"], "AnsweredBy": "human"}
    sig = RequestValidator(SANDBOX_TOKEN).compute_signature(url, params)
    r = await env.http.post(url, data=params, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 200, r.text
    await eventually(
        lambda: len(env.statuses.where(message_id=msg.message_id, status="answered")) == 2
    )
    assert await env.outcomes("answered") - before == 1


async def test_pressing_2_dials_the_contact_centre(env: Env) -> None:
    phone = unique_phone()
    msg = outbound_voice(phone, "Your engineer is booked for 2 pm.")
    await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)
    call = await env.answered_call(phone)
    r = await env.press(call["sid"], "2")
    assert f"<Dial>{AGENT}</Dial>" in r["twiml"]
    reply = (await eventually(lambda: env.replies.where(message_id=msg.message_id)))[0]
    assert (reply.intent, reply.text) == ("other", "agent")


async def test_pressing_9_stops_and_star_repeats(env: Env) -> None:
    phone = unique_phone()
    msg = outbound_voice(phone, "Your parcel is delayed.")
    await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)
    call = await env.answered_call(phone)
    r = await env.press(call["sid"], "*")
    assert "<Gather" in r["twiml"] and "Your parcel is delayed." in r["twiml"]
    r = await env.press(call["sid"], "9")
    assert "<Hangup" in r["twiml"]
    reply = (await eventually(lambda: env.replies.where(message_id=msg.message_id)))[0]
    assert reply.intent == "stop"


async def test_a_spoken_stop_in_the_calls_language_stops(env: Env) -> None:
    # Twilio transcribes in the Gather's language, with punctuation.
    phone = unique_phone()
    msg = outbound_voice(phone, "Votre colis est en retard.", language="fr-FR")
    await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)
    call = await env.answered_call(phone)
    assert 'language="fr-FR"' in call["twiml"][0] and "arrêter" in call["twiml"][0]
    r = await env.press(call["sid"], speech="Arrêtez !")
    assert ivr.PROMPTS["fr"].stopped in r["twiml"] and "<Hangup" in r["twiml"]
    reply = (await eventually(lambda: env.replies.where(message_id=msg.message_id)))[0]
    assert reply.intent == "stop"


async def test_a_machine_gets_the_voicemail_and_busy_is_reported(env: Env) -> None:
    await env.http.post(
        f"{env.sandbox}/sandbox/api/twilio/behaviour",
        json={"faults": [{"kind": "machine", "share": 1.0, "to_prefix": "+1201"}]},
    )
    phone = unique_phone()
    msg = outbound_voice(phone, "Your case is resolved.")
    await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)
    call = await env.answered_call(phone)
    assert "<Gather" not in call["twiml"][0] and "Your case is resolved." in call["twiml"][0]
    await eventually(lambda: env.statuses.where(message_id=msg.message_id, status="machine"))

    await env.http.post(
        f"{env.sandbox}/sandbox/api/twilio/behaviour",
        json={"faults": [{"kind": "busy", "share": 1.0}]},
    )
    msg2 = outbound_voice(unique_phone(), "Your case is resolved.")
    await env.producer.publish(OUTBOUND_VOICE, msg2, key=msg2.customer_id)
    busy = await eventually(lambda: env.statuses.where(message_id=msg2.message_id, status="busy"))
    assert busy[0].reason == "call busy"


async def test_webhooks_reject_unsigned_tampered_and_unknown(env: Env) -> None:
    phone = unique_phone()
    msg = outbound_voice(phone, "Hello.")
    await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)
    await env.answered_call(phone)
    before = len(env.replies.items)
    url = f"{env.sender}/webhooks/twilio/voice/gather?mid={msg.message_id}"
    params = {"CallSid": "CAx", "Digits": "1"}
    r = await env.http.post(url, data=params)
    assert r.status_code == 403
    sig = RequestValidator(SANDBOX_TOKEN).compute_signature(url, params)
    r = await env.http.post(
        url, data={**params, "Digits": "9"}, headers={"X-Twilio-Signature": sig}
    )
    assert r.status_code == 403
    unknown = f"{env.sender}/webhooks/twilio/voice/gather?mid=nope"
    sig = RequestValidator(SANDBOX_TOKEN).compute_signature(unknown, params)
    r = await env.http.post(unknown, data=params, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 404
    r = await env.http.post(url, json=params, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 400
    assert len(env.replies.items) == before


@pytest.mark.parametrize(
    ("locale", "language"),
    [
        (None, "en-US"),  # no locale on the reply: English
        ("zh", "zh-CN"),  # the SMS answered was written from the campaign's zh template
    ],
)
async def test_a_callback_calls_the_customer_in_their_language_and_connects_an_agent(
    env: Env, locale: str | None, language: str
) -> None:
    phone = unique_phone()
    reply = EngagementReply(
        reply_id=f"sms-SMcallback-{locale or 'none'}",
        customer_id="cust-cb",
        channel="sms",
        intent="callback",
        text="3",
        message_id="msg-1",
        case_id="case-1",
        at=utc_now(),
        callback_number=phone,
        locale=locale,
    )
    await env.producer.publish(ENGAGEMENT_REPLY, reply, key=reply.customer_id)
    await env.producer.publish(ENGAGEMENT_REPLY, reply, key=reply.customer_id)  # a redelivery
    call = await env.answered_call(phone)
    twiml = call["twiml"][0]
    assert f"<Dial>{AGENT}</Dial>" in twiml
    assert ivr.prompts_for(language).callback in twiml and f'language="{language}"' in twiml
    assert len(await env.calls_to(phone)) == 1


@pytest.mark.parametrize("outcome", ["no-answer", "failed"])
async def test_a_call_nobody_answers_or_that_fails_reports_that_outcome(
    env: Env, outcome: str
) -> None:
    phone = unique_phone()
    r = await env.http.post(
        f"{env.sandbox}/sandbox/api/twilio/behaviour",
        json={"faults": [{"kind": outcome, "share": 1.0, "to_prefix": phone}]},
    )
    assert r.status_code == 200, r.text
    msg = outbound_voice(phone, "Your engineer is booked for 2 pm.")
    await env.producer.publish(OUTBOUND_VOICE, msg, key=msg.customer_id)
    [final] = await eventually(
        lambda: env.statuses.where(message_id=msg.message_id, status=outcome)
    )
    [call] = await env.calls_to(phone)
    assert call["status"] == outcome and call["twiml"] == []  # never answered
    assert final.reason == f"call {outcome}" and final.provider_id == call["sid"]
    assert final.channel == "voice" and final.case_id == msg.case_id
    [sent] = env.statuses.where(message_id=msg.message_id, status="sent")
    assert sent.provider_id == call["sid"]
    assert not env.statuses.where(message_id=msg.message_id, status="answered")
    assert not env.replies.where(message_id=msg.message_id)
