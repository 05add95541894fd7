"""Consume events.inbound.v1 (CloudEvents binary mode) into the same processing as HTTP."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import RootModel

from herald_ingest.domain.intake import EventCatalog, InboundEvent, Rejected, validate_event
from herald_ingest.processing import Processor
from herald_kit import ConsumerLoop, DecodeError, PermanentError, continued, decode

log = logging.getLogger("herald.ingest")


class _JsonObject(RootModel[dict[str, Any]]):
    """Any JSON object: the event type's own schema is applied afterwards, by the catalog."""


def to_event(record: ConsumerRecord[bytes, bytes], catalog: EventCatalog) -> InboundEvent:
    """Decode and validate one record; DecodeError (which means the DLQ) when it is bad."""
    event = decode(record, _JsonObject, unknown_fields="forbid")
    try:
        return validate_event(
            event.id,
            event.source,
            event.type,
            event.time,
            event.data.root,
            catalog,
            traceparent=event.trace.header() if event.trace is not None else None,
        )
    except Rejected as exc:
        raise DecodeError(f"{exc.field}: {exc.reason}", field=exc.field) from exc


def _traceparent(record: ConsumerRecord[bytes, bytes]) -> str | None:
    value: bytes | None = dict(record.headers or ()).get("traceparent")
    return value.decode(errors="replace") if value else None


async def handle_inbound(
    processor: Processor, record: ConsumerRecord[bytes, bytes], catalog: EventCatalog
) -> None:
    """One record: decode, validate, process; bad input goes to the DLQ."""
    await processor.process(to_event(record, catalog))


@dataclass
class BatchInboundLoop(ConsumerLoop):
    """The kit's consumer loop, but each partition's batch is applied in one go (partitions of
    a poll side by side). A batch holds many traces: each event carries its record's
    traceparent to the records it publishes (`InboundEvent.traceparent`).

    Per-record handling costs five database round trips and a broker acknowledgement per event;
    a batch costs about as much as one event. Bad records still go to the DLQ one by one with
    their reason; if the batch as a whole fails, its records are handled one by one by the
    kit's per-record path (retries, DLQ), which is safe because processing is idempotent.
    """

    processor: Processor | None = None
    catalog: EventCatalog = field(default_factory=EventCatalog)

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer: AIOKafkaConsumer = self._consumer
        while not self._stopping:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=self.batch)
            except KafkaError as exc:
                log.warning("poll failed, retrying", extra={"group": self.group, "error": str(exc)})
                await asyncio.sleep(1)
                continue
            if not batches:
                continue

            async def partition(tp: TopicPartition, records: list[Any]) -> None:
                await self._handle_batch(records)
                await self._commit(consumer, tp, records[-1].offset + 1)

            # Partitions hold different cases: their batches are applied side by side.
            await asyncio.gather(*(partition(tp, rs) for tp, rs in batches.items()))
            self._update_lag(consumer)

    async def _handle_batch(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        assert self.processor is not None
        events: list[InboundEvent] = []
        sources: list[ConsumerRecord[bytes, bytes]] = []
        for record in records:
            try:
                events.append(to_event(record, self.catalog))
                sources.append(record)
            except PermanentError as exc:
                # In the record's trace, as the kit's per-record path is: its log line too.
                with continued(_traceparent(record)):
                    await self._to_dlq(record, exc, "permanent")
        try:
            outcomes = await self.processor.process_batch(events)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "batch failed; handling its records one by one",
                extra={"group": self.group, "error": type(exc).__name__},
            )
            good = {(e.source, e.id) for e in events}
            for record in records:
                headers = dict(record.headers or ())
                ident = (
                    headers.get("ce_source", b"").decode(errors="replace"),
                    headers.get("ce_id", b"").decode(errors="replace"),
                )
                if ident in good:
                    await self._handle_one(record)
        else:
            for record, outcome in zip(sources, outcomes, strict=True):
                if isinstance(outcome, PermanentError):
                    # Its case could not be announced with it (too large for the broker, say):
                    # the event's own fault, dead-lettered with why while the others went on.
                    with continued(_traceparent(record)):
                        await self._to_dlq(record, outcome, "permanent")
        last = records[-1]
        self._positions[TopicPartition(last.topic, last.partition)] = last.offset + 1
        self.handled += len(records)
