"""The voice-sender service app."""

from __future__ import annotations

from datetime import timedelta

from aiokafka import ConsumerRecord
from fastapi import FastAPI

from herald_contracts import EngagementReply, OutboundVoice, Topics
from herald_kit import CircuitBreaker, ConcurrentConsumerLoop, Pacer, Runtime, build_app, decode
from herald_voice_sender.adapters.ledger import CallLedger
from herald_voice_sender.adapters.provider import TwilioVoice, VoiceProvider
from herald_voice_sender.api import webhooks
from herald_voice_sender.calling import RetryPolicy, VoiceCalling
from herald_voice_sender.config import Settings
from herald_voice_sender.domain.window import CallingHours


def create_app(settings: Settings | None = None, provider: VoiceProvider | None = None) -> FastAPI:
    """Build the voice-sender app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "voice-sender")
    # The call ledger: a row per call, forgotten once no redelivery can ask for it
    # (docs/operations.md#data-retention).
    runtime.forget_old("call_ledger")
    # Opt-outs chosen on a call: one row per number (a hash of it), kept while a call handed
    # over before the stop, or within the hold after it, can still come (a redelivery).
    hold = timedelta(seconds=settings.opt_out_hold_seconds)
    runtime.forget_old("opt_outs", keep=timedelta(seconds=settings.ledger_retention_seconds) + hold)
    app = build_app(
        settings,
        runtime,
        title="Herald voice-sender",
        description="Places IVR callback calls through Twilio Voice.",
        routers=[webhooks.router],
    )
    # The rate is per caller id across every replica: this replica paces at its share of it,
    # the part of the outbound and call-back partitions it owns (both place calls).
    pacer = Pacer(settings.rate_per_second, settings.rate_burst, name="voice-sender")

    @runtime.on_start
    async def _wire() -> None:
        ledger = CallLedger(runtime.db)
        await ledger.ensure_indexes()
        client = provider or TwilioVoice(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            caller_id=settings.caller_id,
            base_url=settings.twilio_base_url,
            timeout=settings.twilio_timeout_seconds,
        )
        app.state.provider = client
        app.state.calling = VoiceCalling(
            ledger,
            client,
            runtime.producer,
            base_url=settings.base_url(),
            identity=settings.caller_id,
            machine_detection=settings.machine_detection,
            pacer=pacer,
            breaker=CircuitBreaker(
                threshold=settings.breaker_threshold,
                cooldown=settings.breaker_cooldown_seconds,
                name="voice-sender",
            ),
            calling_hours=CallingHours(settings.calling_hours_start, settings.calling_hours_end),
            callback_max_defer=timedelta(hours=settings.callback_max_defer_hours),
            opt_out_hold=hold,
            retry=RetryPolicy(
                attempts=settings.send_attempts,
                base_seconds=settings.send_backoff_seconds,
                cap_seconds=settings.send_backoff_cap_seconds,
            ),
        )

    @runtime.on_stop
    async def _close() -> None:
        await app.state.provider.close()

    async def on_outbound(record: ConsumerRecord[bytes, bytes]) -> None:
        msg = decode(record, OutboundVoice).data
        calling: VoiceCalling = app.state.calling
        await calling.place(calling.from_outbound(msg), say=msg.say)

    async def on_reply(record: ConsumerRecord[bytes, bytes]) -> None:
        reply = decode(record, EngagementReply).data
        # Call-back requests from other channels (an SMS "3", the status page).
        if reply.intent == "callback" and reply.channel != "voice":
            await app.state.calling.callback(reply)

    outbound = ConcurrentConsumerLoop(
        settings,
        runtime.producer,
        "voice-sender",
        [Topics.OUTBOUND_VOICE],
        on_outbound,
        batch=settings.consumer_batch,
        concurrency=settings.concurrency,
    )
    outbound.on_assignment(pacer.follow)
    runtime.consumers.append(outbound)
    callbacks = runtime.consume("voice-sender-callbacks", [Topics.ENGAGEMENT_REPLIES], on_reply)
    callbacks.on_assignment(pacer.follow)
    return app
