"""Send one outbound SMS exactly once, and report every status."""

from __future__ import annotations

import logging

from herald_contracts import DELIVERY_STATUS, DeliveryState, DeliveryStatus, OutboundSms, utc_now
from herald_kit import EventProducer, RetryableError
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.adapters.provider import ProviderRejected, SmsProvider

log = logging.getLogger("herald.sms")


class SmsSending:
    """Ledger, provider and status publication together."""

    def __init__(
        self, ledger: Ledger, provider: SmsProvider, producer: EventProducer, *, callback_url: str
    ) -> None:
        self.ledger = ledger
        self.provider = provider
        self.producer = producer
        self.callback_url = callback_url

    async def status(
        self,
        msg: OutboundSms,
        status: DeliveryState,
        *,
        provider_id: str | None = None,
        error_code: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Publish a delivery status of a message."""
        await self.producer.publish(
            DELIVERY_STATUS,
            DeliveryStatus(
                message_id=msg.message_id,
                request_id=msg.request_id,
                campaign_id=msg.campaign_id,
                customer_id=msg.customer_id,
                case_id=msg.case_id,
                channel="sms",
                status=status,
                provider_id=provider_id,
                error_code=error_code,
                reason=reason,
                at=utc_now(),
            ),
            key=msg.customer_id,
            event_id=f"{msg.message_id}:{status}",
            subject=msg.case_id,
        )

    async def send(self, msg: OutboundSms) -> None:
        """Send unless the ledger says it was sent or may have been."""
        now = utc_now()
        if msg.expires_at is not None and msg.expires_at <= now:
            await self.ledger.set(msg.message_id, "failed", error_code="expired")
            await self.status(msg, "failed", error_code="expired", reason="expired before send")
            return
        may_send, row = await self.ledger.claim(msg.message_id, now=now)
        if not may_send:
            assert row is not None
            if row["status"] == "sending":
                # A crash between the provider call and the ledger update: never resend blindly.
                await self.ledger.set(msg.message_id, "unknown")
                await self.status(msg, "unknown", reason="found in 'sending' after a restart")
            return
        try:
            sent = await self.provider.send(
                to=msg.to, body=msg.body, status_callback=self.callback_url
            )
        except RetryableError:
            await self.ledger.set(msg.message_id, "retry")
            raise
        except ProviderRejected as exc:
            await self.ledger.set(msg.message_id, "failed", error_code=exc.code)
            await self.status(msg, "failed", error_code=exc.code, reason=exc.detail)
            return
        await self.ledger.set(msg.message_id, "sent", provider_id=sent.provider_id)
        await self.status(msg, "sent", provider_id=sent.provider_id)
