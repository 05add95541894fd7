"""The outbound.email.v1 consumer: decode, send through the ledger, commit after."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from herald_contracts import OutboundEmail, Topics
from herald_email_sender.config import Settings
from herald_email_sender.sending import EmailSending
from herald_kit import ConcurrentConsumerLoop, EventProducer, decode

GROUP = "email-sender"


def outbound_consumer(
    settings: Settings, producer: EventProducer, sending: EmailSendingRef
) -> ConcurrentConsumerLoop:
    """A batch consumer whose records run concurrently per customer (the topic's key)."""

    async def on_message(record: ConsumerRecord[bytes, bytes]) -> None:
        # DecodeError is permanent: the loop puts the record on the DLQ with its reason.
        await sending.get().send(decode(record, OutboundEmail).data)

    return ConcurrentConsumerLoop(
        settings,
        producer,
        GROUP,
        [Topics.OUTBOUND_EMAIL],
        on_message,
        batch=settings.consumer_batch,
        concurrency=settings.send_concurrency,
    )


class EmailSendingRef:
    """The sending service, set once the runtime has connected (the consumer exists before)."""

    def __init__(self) -> None:
        self._sending: EmailSending | None = None

    def set(self, sending: EmailSending) -> None:
        """Install it."""
        self._sending = sending

    def get(self) -> EmailSending:
        """It, or RuntimeError before start."""
        if self._sending is None:
            raise RuntimeError("email sending not started")
        return self._sending
