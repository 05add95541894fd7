"""The sms-sender service app."""

from __future__ import annotations

from aiokafka import ConsumerRecord
from fastapi import FastAPI

from herald_contracts import OutboundSms, Topics
from herald_kit import Runtime, build_app, decode
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.adapters.provider import SmsProvider, TwilioSms
from herald_sms_sender.config import Settings
from herald_sms_sender.sending import SmsSending


def create_app(settings: Settings | None = None, provider: SmsProvider | None = None) -> FastAPI:
    """Build the sms-sender app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "sms-sender")
    app = build_app(
        settings,
        runtime,
        title="Herald sms-sender",
        description="Sends SMS through Twilio; status callbacks and inbound replies.",
    )

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
        )
        app.state.provider = client
        app.state.sending = SmsSending(
            ledger,
            client,
            runtime.producer,
            callback_url=f"{settings.base_url()}/webhooks/twilio/status",
        )

    @runtime.on_stop
    async def _close() -> None:
        await app.state.provider.close()

    async def on_message(record: ConsumerRecord[bytes, bytes]) -> None:
        await app.state.sending.send(decode(record, OutboundSms).data)

    runtime.consume("sms-sender", [Topics.OUTBOUND_SMS], on_message)
    return app
