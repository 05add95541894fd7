"""A consumer loop that handles a polled batch concurrently, one key at a time.

Senders spend most of their time waiting on a provider; handling the records of a batch one by
one caps them at one provider round trip per message. This loop keeps the kit's guarantees
(per-record retries and DLQ, commit after every record of the batch is done) and adds
concurrency across keys only: records sharing a key (a customer) stay in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
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
        limit = asyncio.Semaphore(max(1, self.concurrency))
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
            for tp, records in batches.items():
                for record in records:
                    lanes[(tp, record.key)].append(record)

            async def lane(records: list[ConsumerRecord[bytes, bytes]]) -> None:
                async with limit:
                    for record in records:
                        await self._handle_one(record)

            # Every record is handled (or sent to the DLQ) before any offset is committed.
            await asyncio.gather(*(lane(rs) for rs in lanes.values()))
            for tp, records in batches.items():
                await self._commit(consumer, tp, records[-1].offset + 1)
            self._update_lag(consumer)
