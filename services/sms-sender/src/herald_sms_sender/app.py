"""The sms-sender service app."""

from __future__ import annotations

from aiokafka import ConsumerRecord
from fastapi import FastAPI

from herald_contracts import OutboundSms, Topics
from herald_kit import CircuitBreaker, ConcurrentConsumerLoop, Pacer, Runtime, build_app, decode
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.adapters.provider import SmsProvider, TwilioSms
from herald_sms_sender.api import webhooks
from herald_sms_sender.config import Settings
from herald_sms_sender.replies import Replies
from herald_sms_sender.sending import RetryPolicy, SmsSending


def create_app(settings: Settings | None = None, provider: SmsProvider | None = None) -> FastAPI:
    """Build the sms-sender app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "sms-sender")
    # The send ledger: a row per message, forgotten once no redelivery can ask for it
    # (docs/operations.md#data-retention).
    runtime.forget_old("send_ledger")
    app = build_app(
        settings,
        runtime,
        title="Herald sms-sender",
        description="Sends SMS through Twilio; status callbacks and inbound replies.",
        routers=[webhooks.router],
    )
    identity = settings.messaging_service_sid or settings.from_number
    # The rate is per sender identity across every replica: this replica paces at its share
    # of it, the part of the outbound partitions it owns.
    pacer = Pacer(settings.rate_per_second, settings.rate_burst, name="sms-sender")

    @runtime.on_start
    async def _wire() -> None:
        ledger = Ledger(runtime.db)
        await ledger.ensure_indexes()
        client = provider or TwilioSms(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            from_number=settings.from_number,
            messaging_service_sid=settings.messaging_service_sid,
            base_url=settings.twilio_base_url,
            timeout=settings.twilio_timeout_seconds,
        )
        app.state.provider = client
        app.state.sending = SmsSending(
            ledger,
            client,
            runtime.producer,
            callback_url=f"{settings.base_url()}/webhooks/twilio/status",
            identity=identity,
            pacer=pacer,
            breaker=CircuitBreaker(
                threshold=settings.breaker_threshold,
                cooldown=settings.breaker_cooldown_seconds,
                name="sms-sender",
            ),
            retry=RetryPolicy(
                attempts=settings.send_attempts,
                base_seconds=settings.send_backoff_seconds,
                cap_seconds=settings.send_backoff_cap_seconds,
            ),
        )
        app.state.replies = Replies(
            ledger,
            runtime.producer,
            keywords=settings.reply_keywords,
            help_answer=settings.help_text.format(
                brand=settings.brand, contact=settings.help_contact
            ),
            help_answers=settings.help_answers(),
        )

    @runtime.on_stop
    async def _close() -> None:
        await app.state.provider.close()

    async def on_message(record: ConsumerRecord[bytes, bytes]) -> None:
        await app.state.sending.send(decode(record, OutboundSms).data)

    # Sends wait on the provider, so a batch is handled concurrently (per customer in order).
    outbound = ConcurrentConsumerLoop(
        settings,
        runtime.producer,
        "sms-sender",
        [Topics.OUTBOUND_SMS],
        on_message,
        batch=settings.consumer_batch,
        concurrency=settings.concurrency,
    )
    outbound.on_assignment(pacer.follow)
    runtime.consumers.append(outbound)
    return app
