"""A consumer loop for hot paths: each polled batch is handled concurrently across keys.

Records with the same key (one customer) stay in order, one after another; different keys
run side by side up to a limit. Offsets are committed only when the whole batch is handled,
so a crash mid-batch redelivers it and the handler's idempotency (a send ledger) decides.
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
class BatchConsumerLoop(ConsumerLoop):
    """ConsumerLoop whose batches run concurrently per key (DLQ, retries and commits as usual)."""

    concurrency: int = 32

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        limit = asyncio.Semaphore(max(1, self.concurrency))

        async def run_key(records: list[ConsumerRecord[bytes, bytes]]) -> None:
            async with limit:
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
            by_key: dict[tuple[str, int, bytes | None], list[ConsumerRecord[bytes, bytes]]]
            by_key = defaultdict(list)
            ends: dict[TopicPartition, int] = {}
            for tp, records in batches.items():
                for record in records:
                    by_key[(tp.topic, tp.partition, record.key)].append(record)
                ends[tp] = records[-1].offset + 1
            await asyncio.gather(*(run_key(rs) for rs in by_key.values()))
            try:
                # One request for every partition of the batch: commits cost a round trip each.
                await consumer.commit(ends)
            except KafkaError:
                for tp, offset in ends.items():
                    await self._commit(consumer, tp, offset)
            self._update_lag(consumer)
