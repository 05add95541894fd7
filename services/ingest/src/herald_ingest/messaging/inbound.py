"""Consume events.inbound.v1 (CloudEvents binary mode) into the same processing as HTTP."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from herald_contracts import CaseEventData
from herald_ingest.domain.intake import Rejected, validate_event
from herald_ingest.processing import Processor
from herald_kit import DecodeError, decode


async def handle_inbound(processor: Processor, record: ConsumerRecord[bytes, bytes]) -> None:
    """Decode, validate, process; bad input raises DecodeError, which sends it to the DLQ."""
    event = decode(record, CaseEventData)
    try:
        inbound = validate_event(event.id, event.source, event.type, event.time, event.data)
    except Rejected as exc:
        raise DecodeError(exc.reason, field=exc.field) from exc
    await processor.process(inbound)
