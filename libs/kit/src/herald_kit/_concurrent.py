"""A consumer loop for hot paths: records are handled as they arrive, concurrently across keys.

Senders spend most of their time waiting on a provider, and the dispatcher on the database;
handling the records of a batch one by one caps them at one round trip per message. This loop
keeps the kit's guarantees (per-record retries and DLQ) and adds concurrency across keys only:
records sharing a partition and key (a customer) stay in order.

It is pipelined: polling goes on while records are handled, so a record arriving while others
are in flight starts at once instead of waiting for the slowest record of the batch before it
(and that batch's commit). A partition's offset is committed only up to its oldest record not yet
handled, so a crash redelivers everything unfinished and the handler's idempotency (a ledger, a
claim) decides. At most `batch` records are in flight (as many as one polled batch held before);
polling waits for room beyond that.

A stop (SIGTERM on every deploy) drains: polling ends and no worker takes another record, but
the records being handled (a provider request, an SMTP session) may finish within the stop
grace (`consumer_stop_grace_seconds`); only when it ends is what still runs cancelled, and what
finished is committed. Cutting a provider request short would leave its ledger row 'sending',
which a redelivery cannot tell from a message the provider got, so it would never be sent.
Records not started stay uncommitted and are redelivered; a record still waiting in a pacer or a
retry backoff when the grace ends is cancelled, its row 'queued' or 'retry', which redelivery
resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from herald_kit._kafka import ConsumerLoop, cancel_and_wait

log = logging.getLogger("herald.kafka")

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
# How long a revoked partition's records in flight may take to finish before the group moves on
# (they are then redelivered to the new owner, which the handlers' idempotency absorbs).
REVOKE_GRACE_SECONDS = 10.0
# Pause between commits while records keep completing: commits are broker writes (at 0.05 s the
# e2e benchmark's broker spent half a core on them and their fetches), and a crash redelivers
# at most what this window completed, which the handlers' idempotency absorbs. A stop and a
# rebalance commit at once.
COMMIT_EVERY_SECONDS = 1.0
# How long a stop waits for its last commit. A broker that does not answer would otherwise hold
# the stop for good (a commit is retried while the partition is ours); what is left uncommitted
# is redelivered after the restart, which the handlers' idempotency absorbs.
STOP_COMMIT_SECONDS = 10.0


class _Partition:
    """One assigned partition's records in flight, in offset order, and how far it is handled."""

    __slots__ = ("done", "drained", "pending", "upto")

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.upto: int | None = None  # everything below is handled: the offset to commit
        self.drained = asyncio.Event()
        self.drained.set()

    def add(self, offset: int) -> None:
        self.pending.append(offset)
        self.drained.clear()

    def finish(self, offset: int) -> bool:
        """Mark one record handled; True when the committable offset moved."""
        self.done.add(offset)
        moved = False
        while self.pending and self.pending[0] in self.done:
            first = self.pending.popleft()
            self.done.discard(first)
            self.upto = first + 1
            moved = True
        if not self.pending:
            self.drained.set()
        return moved


@dataclass
class ConcurrentConsumerLoop(ConsumerLoop):
    """ConsumerLoop whose records are handled with up to `concurrency` keys in flight."""

    concurrency: int = 64
    _parts: dict[TopicPartition, _Partition] = field(default_factory=dict)
    _lanes: dict[tuple[TopicPartition, bytes | None], deque[tuple[Record, _Partition]]] = field(
        default_factory=dict
    )
    _ready: asyncio.Queue[tuple[TopicPartition, bytes | None]] | None = None
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    _in_flight: int = 0
    _committed: dict[TopicPartition, int] = field(default_factory=dict)
    _commit_task: asyncio.Task[None] | None = None
    _busy: set[asyncio.Task[None]] = field(default_factory=set)  # workers handling a record

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        await self._release(revoked)

    async def _end_run(self) -> None:
        """Cancel the polling task at once: its records are handled by workers of their own,
        which its clean-up (`_drain`) lets finish within the stop grace."""
        await cancel_and_wait(self._task)

    @property
    def _limit(self) -> int:
        return max(1, self.batch)

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        self._ready = asyncio.Queue()
        self._room.set()
        workers = [
            asyncio.create_task(self._worker(), name=f"consumer:{self.group}:worker")
            for _ in range(max(1, self.concurrency))
        ]
        try:
            while not self._stopping:
                if self._in_flight >= self._limit:
                    self._room.clear()
                    await self._room.wait()
                    continue
                try:
                    batches = await consumer.getmany(
                        timeout_ms=500, max_records=min(self.batch, self._limit - self._in_flight)
                    )
                except KafkaError as exc:
                    log.warning(
                        "poll failed, retrying", extra={"group": self.group, "error": str(exc)}
                    )
                    await asyncio.sleep(1)
                    continue
                for tp, records in batches.items():
                    part = self._parts.get(tp)
                    if part is None:
                        part = self._parts[tp] = _Partition()
                    for record in records:
                        part.add(record.offset)
                        self._in_flight += 1
                        lane_key = (tp, record.key)
                        lane = self._lanes.get(lane_key)
                        if lane is None:
                            self._lanes[lane_key] = deque(((record, part),))
                            self._ready.put_nowait(lane_key)
                        else:
                            lane.append((record, part))
                if batches:
                    self._update_lag(consumer)
        finally:
            await self._drain(workers)
            if self._commit_task is not None:
                self._commit_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._commit_task
            # What finished before the stop is committed, so a restart does not redo it.
            with contextlib.suppress(
                KafkaError, asyncio.CancelledError, AssertionError, TimeoutError
            ):
                await asyncio.wait_for(self._commit_progress(consumer), STOP_COMMIT_SECONDS)

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        """Let the records being handled finish within the stop grace, then cancel the rest.

        Idle workers are waiting for a lane and end at once; a busy one ends after its record
        (it takes no other once stopping), or is cancelled when the grace is over. The caller
        commits what finished afterwards.
        """
        self.stopping()
        busy = set(self._busy)
        for w in workers:
            if w not in busy:
                w.cancel()
        if busy:
            _, late = await asyncio.wait(busy, timeout=self._grace_left())
            if late:
                log.warning(
                    "records still being handled when the stop grace ended; cancelled",
                    extra={"group": self.group, "count": len(late)},
                )
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self) -> None:
        assert self._ready is not None
        me = asyncio.current_task()
        assert me is not None
        while not self._stopping:
            lane_key = await self._ready.get()
            lane = self._lanes[lane_key]
            tp = lane_key[0]
            while lane:
                if self._stopping:
                    # Stopping: what was not started is left uncommitted, for redelivery.
                    return
                record, part = lane[0]
                # A partition given up in a rebalance skips what it had not started.
                owned = self._parts.get(tp) is part
                if owned:
                    self._busy.add(me)
                    try:
                        await self._handle_one(record)
                    except Exception as exc:
                        # _handle_one dead-letters what fails; should anything still escape, the
                        # worker lives on and the record is finished, or the partition's commit
                        # point would stay behind it for good.
                        self._log_failure("record could not be handled; skipped", record, exc)
                    finally:
                        self._busy.discard(me)
                lane.popleft()
                self._in_flight -= 1
                if self._in_flight < self._limit:
                    self._room.set()
                if owned and self._parts.get(tp) is part and part.finish(record.offset):
                    self._schedule_commit()
            del self._lanes[lane_key]

    def _schedule_commit(self) -> None:
        if self._commit_task is None or self._commit_task.done():
            self._commit_task = asyncio.create_task(self._commits())

    async def _commits(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        # Pace commits while records keep completing; stop once nothing moved.
        moved = await self._commit_progress(consumer)
        while moved:
            await asyncio.sleep(COMMIT_EVERY_SECONDS)
            moved = await self._commit_progress(consumer)

    def _moved(self, only: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Partitions (of `only`) handled further than their last commit: where they stand."""
        return {
            tp: part.upto
            for tp, part in self._parts.items()
            if (only is None or tp in only)
            and part.upto is not None
            and part.upto != self._committed.get(tp)
        }

    async def _commit_progress(self, consumer: AIOKafkaConsumer) -> bool:
        """Commit every partition that moved since the last commit; False when none had."""
        ends = self._moved()
        if not ends:
            return False
        try:
            # One request for every partition that moved: commits cost a round trip each.
            await consumer.commit(ends)
        except KafkaError:
            for tp, offset in ends.items():
                await self._commit(consumer, tp, offset)
        self._committed.update(ends)
        return True

    async def _release(self, revoked: set[TopicPartition]) -> None:
        """Before a rebalance moves partitions away: let their records in flight finish (for a
        while), commit what is done, and forget them."""
        parts = [p for tp, p in self._parts.items() if tp in revoked]
        if parts and self._stopping:
            # Nothing new starts while stopping: wait for what runs, not for what never will.
            busy = set(self._busy)
            if busy:
                await asyncio.wait(busy, timeout=min(REVOKE_GRACE_SECONDS, self._grace_left()))
        elif parts:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(p.drained.wait() for p in parts)), REVOKE_GRACE_SECONDS
                )
        consumer = self._consumer
        if consumer is not None:
            ends = self._moved(revoked)
            if ends:
                with contextlib.suppress(KafkaError):
                    await consumer.commit(ends)
        for tp in revoked:
            self._parts.pop(tp, None)
            self._committed.pop(tp, None)
            self._positions.pop(tp, None)
