"""A consumer loop for hot paths: a polled batch is handled concurrently, one key at a time.

Senders spend most of their time waiting on a provider, and the dispatcher on the database;
handling the records of a batch one by one caps them at one round trip per message. This loop
keeps the kit's guarantees (per-record retries and DLQ) and adds concurrency across keys only:
records sharing a partition and key (a customer) stay in order. Offsets are committed only when
every record of the batch is handled, so a crash mid-batch redelivers it and the handler's
idempotency (a ledger, a claim) decides.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from herald_kit._kafka import ConsumerLoop

log = logging.getLogger("herald.kafka")


@dataclass
class ConcurrentConsumerLoop(ConsumerLoop):
    """ConsumerLoop whose batches are handled with up to `concurrency` keys in flight."""

    concurrency: int = 64

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer

        async def worker(lanes: Iterator[list[ConsumerRecord[bytes, bytes]]]) -> None:
            # Workers take the next lane as they finish one: no task or semaphore wait per lane
            # (asyncio's Semaphore checks every waiter on each acquire before Python 3.12).
            for records in lanes:
                for record in records:
                    await self._handle_one(record)

        while not self._stopping:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=self.batch)
            except KafkaError as exc:
                log.warning("poll failed, retrying", extra={"group": self.group, "error": str(exc)})
                await asyncio.sleep(1)
                continue
            if not batches:
                continue
            lanes: dict[tuple[TopicPartition, bytes | None], list[ConsumerRecord[bytes, bytes]]]
            lanes = defaultdict(list)
            ends: dict[TopicPartition, int] = {}
            for tp, records in batches.items():
                for record in records:
                    lanes[(tp, record.key)].append(record)
                ends[tp] = records[-1].offset + 1
            # Every record is handled (or sent to the DLQ) before any offset is committed.
            queue = iter(list(lanes.values()))
            await asyncio.gather(
                *(worker(queue) for _ in range(min(max(1, self.concurrency), len(lanes))))
            )
            try:
                # One request for every partition of the batch: commits cost a round trip each.
                await consumer.commit(ends)
            except KafkaError:
                for tp, offset in ends.items():
                    await self._commit(consumer, tp, offset)
            self._update_lag(consumer)
