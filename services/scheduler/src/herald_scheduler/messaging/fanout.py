"""Audience fan-out: stream the audience in batches, publish requests, checkpoint each batch.

The audience is read from the compacted contacts.preferences.v1 topic itself, not from a
database view: FerretDB v1 reads a few thousand documents a second and pages by `_id` with a
full scan, while the broker streams hundreds of thousands. A fire pins each partition's end
offset when it starts (the audience as of the fire), and walks the partitions in order; per
partition a first pass finds each customer's latest record (a compacted topic may still hold
older snapshots and tombstones), a second pass publishes for those. The first pass keeps a
customer id and an offset per customer, never a snapshot. Without an audience filter that is all
the publishing needs; with one, the second pass reads the partition again from the checkpoint to
the pinned end and evaluates the filter on each latest record's snapshot as it comes, a chunk at
a time: a partition's snapshots (~0.8 KB a customer) are never held together, so a fire's memory
grows by ~0.14 KB per customer of its largest partition, whatever the snapshots hold. The
checkpoint is (partition, offset) after each published batch, so a crash resumes where it
stopped; a batch published but not checkpointed goes out again with the same request ids
(campaign, fire time, customer), which the dispatcher drops.

An audience filter that reads `cases` (the customer's cases) makes the fire pin the compacted
cases.state.v1 topic's end offsets too. Each run (a resume included) first streams that topic up
to its pins and keeps, per live case, only the fields the filter names (`named_members`: its
member names and string literals) and the customers it names, grouped per customer as one JSON
array; memory is bounded by the live cases times those fields, not by the full states. Request
ids stay (campaign, fire time, customer): the cases decide who is in the audience, not how often.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from array import array
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from multiprocessing import get_context
from typing import Any

import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from herald_contracts import CONTACT_REQUESTED, CampaignRef, ContactRequest, Topics, utc_now
from herald_kit import (
    Doc,
    EventProducer,
    ServiceSettings,
    encode,
    kafka_client_options,
    start_client,
    stop_client,
    tune_gc,
    validate_own,
)
from herald_scheduler.adapters.audience import FireRepository
from herald_scheduler.adapters.stats import StatsRepository
from herald_scheduler.domain.campaigns import RequestIds, audience_reads_cases
from herald_scheduler.domain.expressions import ExpressionError, evaluate, named_members
from herald_scheduler.metrics import REQUESTS

log = logging.getLogger("herald.scheduler.fanout")


# How long the broker may hold a fan-out fetch that finds no records (see audience_consumer).
FETCH_WAIT_MS = 5

Member = tuple[int, bytes, bytes]  # (offset, customer id key, snapshot or b"" when not needed)


def audience_consumer(settings: ServiceSettings) -> AIOKafkaConsumer:
    """A consumer for reading pinned ranges. It never waits for new records: a fetch past a
    partition's end must not long-poll, since the next partition's first fetch queues behind it
    (with the default 500 ms wait, a third of a million-customer fan-out went into those waits)."""
    return AIOKafkaConsumer(
        **kafka_client_options(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
        fetch_max_wait_ms=FETCH_WAIT_MS,
    )


async def read_range(
    consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, batch: int
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """The partition's records from the consumer's position up to `end` (exclusive)."""
    while await consumer.position(tp) < end:
        got = await consumer.getmany(tp, timeout_ms=1000, max_records=batch)
        records = [r for r in got.get(tp, []) if r.offset < end]
        if records:
            yield records


async def latest_offsets(
    consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, batch: int
) -> dict[bytes, int]:
    """The first pass: each customer's latest offset below the pinned end, bitwise inverted
    (negative) when that record is a tombstone. A key and an int per customer, no snapshot."""
    consumer.assign([tp])
    consumer.seek(tp, 0)
    latest: dict[bytes, int] = {}
    async for records in read_range(consumer, tp, end, batch):
        for r in records:
            if r.key is not None:
                latest[r.key] = r.offset if r.value is not None else ~r.offset
    return latest


class PinnedMembers:
    """A partition's members as the first pass found them for a fire with an audience filter:
    the offsets of their latest records below the pin, sorted (eight bytes each), and beside
    each a CRC-32 of its customer id (four bytes) by which the second pass finds the customer
    again should the log cleaner remove that record before it is read."""

    __slots__ = ("end", "keys", "offsets")

    def __init__(self, offsets: array[int], keys: array[int], end: int) -> None:
        self.offsets = offsets
        self.keys = keys
        self.end = end  # the pin

    def __len__(self) -> int:
        return len(self.offsets)

    def __iter__(self) -> Iterator[int]:
        return iter(self.offsets)


async def partition_members(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int, *, keep: bool, batch: int
) -> list[Member] | PinnedMembers:
    """One read of the partition up to the pinned end finds each customer's latest record;
    older snapshots and customers whose latest record is a tombstone are left out, and so are
    those before `start` (already published).

    Without an audience filter, the members themselves (offset, customer, b""), in offset order.
    With one (`keep`), only their offsets and customer id checksums, twelve bytes each:
    `member_chunks` reads their snapshots again a chunk at a time, since a partition's snapshots
    held at once outgrow the pod (a million customers' would take a gigabyte)."""
    latest = await latest_offsets(consumer, tp, end, batch)
    if keep:
        keys = sorted((k for k, off in latest.items() if off >= start), key=latest.__getitem__)
        return PinnedMembers(
            array("q", (latest[k] for k in keys)), array("I", map(zlib.crc32, keys)), end
        )
    return sorted((off, key, b"") for key, off in latest.items() if off >= start)


async def member_chunks(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    members: list[Member] | PinnedMembers,
    batch: int,
    *,
    on_lost: Callable[[int], None] | None = None,
) -> AsyncGenerator[list[Member], None]:
    """A partition's members (as `partition_members` found them) in chunks of `batch`, in
    offset order. Offsets are read again from `start` up to the last of them, and only the
    records at those offsets are kept, with their snapshots: the records between are older
    snapshots and tombstones. One chunk (and the fetch it is taken from) is held at a time.

    A member whose record is gone by then was compacted away between the two reads: the
    customer wrote a newer record after the pin, and the cleaner kept only that. They were in
    the fire's audience, so they are not dropped: after the last member, the partition is read on
    from the pin for their records (by customer id checksum), and each such member is judged on
    the first record found, the one nearest the pin, and published last (its offset is past the
    pin). A member found by a tombstone was erased since and is left out; `on_lost` is told how
    many were found by nothing (counted with the fire's audience errors)."""
    if isinstance(members, list):
        for i in range(0, len(members), batch):
            yield members[i : i + batch]
        return
    offsets, keys = members.offsets, members.keys
    if not offsets:
        return
    consumer.assign([tp])
    consumer.seek(tp, start)
    chunk: list[Member] = []
    lost: list[int] = []  # the customer id checksums of members whose record is gone
    i, count = 0, len(offsets)
    async for records in read_range(consumer, tp, offsets[-1] + 1, batch):
        for r in records:
            while i < count and offsets[i] < r.offset:
                lost.append(keys[i])  # compacted away since the first pass
                i += 1
            if i < count and offsets[i] == r.offset and r.key is not None and r.value is not None:
                i += 1
                chunk.append((r.offset, r.key, r.value))
                if len(chunk) == batch:
                    yield chunk
                    chunk = []
    lost.extend(keys[i:])  # the last records themselves were compacted away
    if lost:
        found, missing = await refind_members(consumer, tp, members.end, lost, batch)
        chunk.extend(found)
        log.warning(
            "fan-out: audience members' records were compacted away while it read them",
            extra={"partition": tp.partition, "found_past_pin": len(found), "missing": missing},
        )
        if missing and on_lost is not None:
            on_lost(missing)
    for j in range(0, len(chunk), batch):
        yield chunk[j : j + batch]


async def refind_members(
    consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, lost: list[int], batch: int
) -> tuple[list[Member], int]:
    """The records past the pin `end` of the members whose latest record below it was compacted
    away (`lost`: their customer id checksums): per customer, the first record past the pin, in
    offset order, tombstones left out; and how many members no record was found for. Reads until
    each is found or the partition's end.

    A checksum is not an id: a customer sharing a lost member's (about one in four billion) may
    be taken for them. One of the partition's members is then published again under the same
    request id, which the dispatcher drops; a customer who joined after the pin is contacted."""
    wanted = Counter(lost)
    seen: set[bytes] = set()
    found: list[Member] = []
    consumer.seek(tp, end)
    while wanted:
        got = await consumer.getmany(tp, timeout_ms=1000, max_records=batch)
        records = got.get(tp, [])
        if not records:
            break  # the partition's end
        for r in records:
            if r.key is None or r.key in seen:
                continue
            crc = zlib.crc32(r.key)
            if crc not in wanted:
                continue
            seen.add(r.key)
            wanted[crc] -= 1
            if not wanted[crc]:
                del wanted[crc]
            if r.value is not None:
                found.append((r.offset, r.key, r.value))
    return found, sum(wanted.values())


def read_partition_members(
    settings: ServiceSettings, topic: str, p: int, start: int, end: int, keep: bool, batch: int
) -> list[Member] | PinnedMembers:
    """`partition_members` in a process of its own (the fan-out's read-ahead worker), on the
    event loop and collector settings the service runs with."""
    tune_gc(settings.gc_threshold)

    async def read() -> list[Member] | PinnedMembers:
        consumer = audience_consumer(settings)
        try:
            await start_client(consumer)
            return await partition_members(
                consumer, TopicPartition(topic, p), start, end, keep=keep, batch=batch
            )
        finally:
            await stop_client(consumer)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(read())


class RequestEncoder:
    """Encodes one fire's requests fast: the envelope and the body's shared part are serialised
    once, then only the request id and customer change (a large fan-out is bound by this)."""

    def __init__(self, template: ContactRequest, *, source: str) -> None:
        headers, _ = encode(CONTACT_REQUESTED, template, source=source, event_id="-")
        self._headers = [(k, v) for k, v in headers if k != "ce_id"]
        rest = template.model_dump(mode="json", exclude={"request_id", "customer_id"})
        self._rest = json.dumps(rest, separators=(",", ":"))[1:].encode()

    def encode(self, rid: str, customer_id: str) -> tuple[list[tuple[str, bytes]], bytes]:
        """Headers and value of one request."""
        head = json.dumps(customer_id)
        value = b'{"request_id":"' + rid.encode() + b'","customer_id":' + head.encode()
        return [("ce_id", rid.encode()), *self._headers], value + b"," + self._rest


def request_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """The fan-out's own producer: idempotent like the service's, with large record batches
    (a fire publishes whole batches per partition). The benchmark's raw baseline uses it too."""
    return AIOKafkaProducer(
        **kafka_client_options(settings),
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=512 * 1024,
    )


class FanOut:
    """Runs one fire's fan-out to completion, resuming from its checkpoint."""

    def __init__(
        self,
        settings: ServiceSettings,
        fires: FireRepository,
        producer: EventProducer,
        *,
        batch: int,
        stats: StatsRepository | None = None,
        status: Callable[[str], Awaitable[str]] | None = None,
        read_ahead_records: int = 0,
    ) -> None:
        self.read_ahead_records = read_ahead_records
        self.stats = stats
        self.status = status
        self.settings = settings
        self.fires = fires
        self.producer = producer
        self.batch = batch
        self.topic = Topics.CONTACTS_PREFERENCES.name(settings.topic_namespace)
        self.case_topic = Topics.CASES_STATE.name(settings.topic_namespace)

    async def audience_ends(self, *, cases: bool = False) -> dict[str, int]:
        """Each partition's end offset now: the audience a fire starting now will cover (with
        `cases`, the cases it will see)."""
        topic = self.case_topic if cases else self.topic
        consumer = self._consumer()
        try:
            await start_client(consumer)
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                parts = set(await consumer._client._wait_on_metadata(topic) or ())
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            ends = await consumer.end_offsets(tps)
            return {str(tp.partition): off for tp, off in ends.items()}
        finally:
            await stop_client(consumer)

    def _consumer(self) -> AIOKafkaConsumer:
        return audience_consumer(self.settings)

    async def run(self, fire_id: str) -> int:
        """Publish the rest of a fire's audience; how many requests this call published."""
        fire = await self.fires.get(fire_id)
        if fire is None or fire["done"]:
            return 0
        ref = validate_own(CampaignRef, fire["campaign"], kind="fires.campaign")
        scheduled: datetime = fire["scheduled_at"]
        expires = fire.get("expires_after_seconds")
        template = ContactRequest(
            request_id="-",
            campaign=ref,
            customer_id="-",
            trigger_key=fire["trigger_key"],
            requested_at=utc_now(),
            expires_at=scheduled + timedelta(seconds=expires) if expires else None,
        )
        job = _Job(
            fire=fire,
            ref=ref,
            encoder=RequestEncoder(template, source="scheduler"),
            out_topic=self.producer.topic_name(Topics.CONTACT_REQUESTS),
        )
        owed = fire.get("stats_owed")
        if owed and self.stats is not None:
            # The last checkpoint's stats, which the run that wrote it may not have added.
            await self._count(job, owed)
        job.producer = request_producer(self.settings)
        consumer = self._consumer()
        ahead: _ReadAhead | None = None
        # Started inside the try: a stop cancelling the fire while they connect still closes
        # both (stopping a client that never started is a no-op).
        try:
            await start_client(job.producer)
            out_parts = await job.producer.partitions_for(job.out_topic)
            job.same_partitions = len(out_parts) == len(fire["ends"])
            job.partition_count = len(out_parts)
            await start_client(consumer)
            parts = [
                (p, job.cp_off if p == job.cp_part else 0, end)
                for p, end in sorted((int(k), v) for k, v in fire["ends"].items())
                if p >= job.cp_part
            ]
            ahead = self._read_ahead(fire, job, parts)
            if audience_reads_cases(job.audience):
                assert job.audience is not None
                job.cases = await self._load_cases(
                    consumer, fire.get("case_ends") or {}, named_members(job.audience)
                )
            for p, start, end in parts:
                if start < end and not await self._partition(job, consumer, ahead, p, start, end):
                    break
                # Members no record was found for (compacted away mid-read) are counted on
                # the fire as audience errors with the partition's last checkpoint.
                lost = job.audience_errors - job.settled_errors
                if not await self._checkpoint(job, p + 1, 0, 0, lost):
                    break
            else:
                job.outcome = "completed"
        finally:
            if ahead is not None:
                ahead.close()
            try:
                await stop_client(consumer)
            finally:
                await stop_client(job.producer)
        if job.outcome is None:
            return job.published  # another worker moved the checkpoint: it carries on
        await self.fires.finish(fire_id, now=utc_now(), outcome=job.outcome)
        if job.stats_op is not None and self.stats is not None:
            # The fire is over (no resume will apply its last count again): its record goes.
            # A record left behind (the database refused) is a few bytes in the counters.
            with contextlib.suppress(Exception):
                await self.stats.requested_batch(job.ref.id, 0, previous=job.stats_op)
        errors = int(fire.get("audience_errors") or 0) + job.settled_errors
        log.info(
            "fan-out ended",
            extra={
                "fire": fire_id,
                "published": job.published,
                "outcome": job.outcome,
                "read_ahead_partitions": job.read_ahead,
                "audience_errors": errors,
            },
        )
        if errors:
            # Once per fire, when it ends: the count only, never a customer or their values.
            log.warning(
                "audience filter could not be evaluated for some customers; they were not "
                "contacted",
                extra={"fire": fire_id, "campaign": job.ref.id, "audience_errors": errors},
            )
        return job.published

    def _read_ahead(
        self, fire: Doc, job: _Job, parts: list[tuple[int, int, int]]
    ) -> _ReadAhead | None:
        """A worker process reading the next partition while this one is published, for fires
        over at least `read_ahead_records` records (0: never); None otherwise."""
        if not self.read_ahead_records or sum(fire["ends"].values()) < self.read_ahead_records:
            return None
        # The first partition is read here while the worker starts and reads the second.
        todo = [part for part in parts if part[1] < part[2]][1:]
        if not todo:
            return None
        return _ReadAhead(self.settings, self.topic, self.batch, todo, keep=bool(job.audience))

    async def _partition(
        self,
        job: _Job,
        consumer: AIOKafkaConsumer,
        ahead: _ReadAhead | None,
        p: int,
        start: int,
        end: int,
    ) -> bool:
        """Read and publish one partition. Only this call holds its members, so they are gone
        before the next partition is taken (and unpickled from the read-ahead worker)."""
        tp = TopicPartition(self.topic, p)
        if ahead is not None and ahead.holds(p):
            members = await ahead.take(p)
            job.read_ahead += 1
        else:
            members = await partition_members(
                consumer, tp, start, end, keep=bool(job.audience), batch=self.batch
            )
        # Chunks are settled in order, each once the broker acknowledged all of it: its
        # checkpoint and stats are written while the next chunk is encoded and sent, so a
        # chunk's database round trips never hold up the encoding.
        settler = _Settler(self, job, p)
        try:
            chunks = member_chunks(consumer, tp, start, members, self.batch, on_lost=job.count_lost)
            async with contextlib.aclosing(chunks):
                return await self._publish(job, p, chunks, settler)
        finally:
            settler.abandon()

    async def _publish(
        self, job: _Job, p: int, chunks: AsyncIterator[list[Member]], settler: _Settler
    ) -> bool:
        batched: bool | None = None
        async for chunk in chunks:
            if self.status is not None and await self.status(job.ref.id) != "active":
                # Paused or archived mid-way: what is in flight is settled, the rest of this
                # fire's audience is not contacted.
                job.outcome = "halted"
                await settler.drain()
                return False
            if batched is None:
                # Both topics are keyed by customer id: with equal partition counts the request
                # belongs on the partition its snapshot came from, so requests go out as whole
                # record batches (the per-message path hashes and queues every record, and
                # costs three times more).
                sample = [m[1] for m in chunk[:100]]
                batched = job.same_partitions and self._hashes_to(sample, p, job)
            errors_before = job.audience_errors
            if batched:
                futures, count = await self._send_batches(job, p, chunk)
            else:
                futures, count = await self._send_each(job, chunk)
            errors = job.audience_errors - errors_before
            if not await settler.add(futures, count, chunk[-1][0] + 1, errors):
                return False
        return await settler.drain()

    async def _load_cases(
        self, consumer: AIOKafkaConsumer, ends: dict[str, int], names: set[str]
    ) -> dict[str, bytes]:
        """Each customer's cases as of the pinned ends: a JSON array of the cases' latest
        states, cut down to the fields the audience filter names."""
        latest: dict[bytes, tuple[int, tuple[str, ...], bytes]] = {}
        for part, end in sorted(ends.items(), key=lambda kv: int(kv[0])):
            tp = TopicPartition(self.case_topic, int(part))
            consumer.assign([tp])
            consumer.seek(tp, 0)
            async for records in read_range(consumer, tp, end, self.batch):
                for r in records:
                    if r.key is None:
                        continue
                    if r.value is None:
                        latest.pop(r.key, None)  # the case is gone
                        continue
                    try:
                        state = json.loads(r.value)
                        version = int(state.get("version", 0))
                        customers = tuple(str(c) for c in state.get("customer_ids") or ())
                    except (ValueError, TypeError, AttributeError):
                        continue  # not a case state: it cannot be in anyone's audience
                    held = latest.get(r.key)
                    if held is not None and held[0] > version:
                        continue  # never regress to an older version of the case
                    kept = {k: v for k, v in state.items() if k in names}
                    latest[r.key] = (version, customers, json.dumps(kept).encode())
        grouped: dict[str, list[bytes]] = {}
        for _, customers, kept_json in latest.values():
            for customer in customers:
                grouped.setdefault(customer, []).append(kept_json)
        del latest
        return {c: b"[" + b",".join(parts) + b"]" for c, parts in grouped.items()}

    async def _send_batches(
        self, job: _Job, p: int, members: list[tuple[int, bytes, bytes]]
    ) -> tuple[list[Any], int]:
        producer = job.producer
        futures: list[Any] = []
        count = 0
        batch = producer.create_batch()
        for _, key, snapshot in members:
            encoded = self._encode(job, key, snapshot)
            if encoded is None:
                continue
            headers, value = encoded
            count += 1
            if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                futures.append(await producer.send_batch(batch, job.out_topic, partition=p))
                batch = producer.create_batch()
                batch.append(timestamp=None, key=key, value=value, headers=headers)
        if batch.record_count():
            futures.append(await producer.send_batch(batch, job.out_topic, partition=p))
        return futures, count

    async def _send_each(
        self, job: _Job, members: list[tuple[int, bytes, bytes]]
    ) -> tuple[list[Any], int]:
        futures: list[Any] = []
        for _, key, snapshot in members:
            encoded = self._encode(job, key, snapshot)
            if encoded is not None:
                headers, value = encoded
                futures.append(
                    await job.producer.send(job.out_topic, value, key=key, headers=headers)
                )
        return futures, len(futures)

    async def _settle(
        self, job: _Job, p: int, futures: list[Any], count: int, offset: int, errors: int
    ) -> bool:
        await asyncio.gather(*futures)
        if not await self._checkpoint(job, p, offset, count, errors):
            return False
        await job.pace()
        return True

    @staticmethod
    def _hashes_to(sample: list[bytes], p: int, job: _Job) -> bool:
        """True when these keys hash to partition p as the producer would place them (a topic
        written with another partitioner falls back to hashing every key)."""
        parts = list(range(job.partition_count))
        return all(DefaultPartitioner()(key, parts, parts) == p for key in sample)

    @staticmethod
    def _encode(
        job: _Job, key: bytes, snapshot: bytes
    ) -> tuple[list[tuple[str, bytes]], bytes] | None:
        """A request for one audience member, or None when the audience filter excludes them."""
        customer = key.decode()
        if job.audience:
            try:
                variables: dict[str, Any] = {"contact": json.loads(snapshot)}
                if job.cases is not None:
                    variables["cases"] = json.loads(job.cases.get(customer, b"[]"))
                if not evaluate(job.audience, variables):
                    return None
            except ExpressionError:
                # The filter fails for this customer's values (a missing key, a bad
                # conversion): not contacted, and counted on the fire so it is not silent.
                job.audience_errors += 1
                return None
            except ValueError:
                return None  # not a snapshot: it cannot be in anyone's audience
        return job.encoder.encode(job.request_id(customer), customer)

    async def _checkpoint(
        self, job: _Job, part: int, off: int, count: int, errors: int = 0
    ) -> bool:
        """Move the checkpoint past a published chunk, then add its counts to the campaign's
        stats.

        The stats are another document, written after the checkpoint: a fan-out stopped in
        between (the stats write failed, the checkpoint's answer was lost, a crash) resumes past
        the chunk and would never count it. So the checkpoint keeps the chunk's stats count
        (`stats_owed`, replaced by the next checkpoint that counts), and a resume applies it
        again first; the count is named after its checkpoint, so applying it twice counts once.
        """
        fire_id = job.fire["_id"]
        owed: Doc | None = None
        if self.stats is not None and (count or errors):
            owed = {
                "op": f"fanout|{fire_id}|{part}|{off}",
                "requested": count,
                "audience_errors": errors,
                "previous": job.stats_op,
            }
        ok = await self.fires.advance(
            fire_id,
            old=(job.cp_part, job.cp_off),
            new=(part, off),
            count=count,
            audience_errors=errors,
            stats=owed,
        )
        if not ok:
            log.warning("fan-out checkpoint moved by another worker", extra={"fire": fire_id})
            return False
        job.cp_part, job.cp_off = part, off
        job.published += count
        job.settled_errors += errors
        REQUESTS.labels("schedule").inc(count)
        if owed is not None:
            await self._count(job, owed)
        return True

    async def _count(self, job: _Job, owed: Doc) -> None:
        """Add a checkpoint's counts to the campaign's stats (once, however often called)."""
        assert self.stats is not None
        await self.stats.requested_batch(
            job.ref.id,
            owed["requested"],
            audience_errors=owed["audience_errors"],
            op=owed["op"],
            previous=owed.get("previous"),
        )
        job.stats_op = owed["op"]


class _ReadAhead:
    """A worker process that reads a fire's partitions one ahead of the publishing: while
    partition p is encoded and sent here, p+1's latest records are found there. The read is a
    third of a large fan-out's CPU; the worker puts it on another core."""

    def __init__(
        self,
        settings: ServiceSettings,
        topic: str,
        batch: int,
        todo: list[tuple[int, int, int]],
        *,
        keep: bool,
    ) -> None:
        self._args = (settings, topic)
        self._batch = batch
        self._keep = keep
        self._todo = list(todo)
        # spawn, not fork: the service's threads (the database driver's, the event loop's)
        # must not be copied mid-operation into the child.
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
        self._next: tuple[int, asyncio.Future[list[Member] | PinnedMembers]] | None = None
        self._submit()

    def _submit(self) -> None:
        if not self._todo:
            self._next = None
            return
        p, start, end = self._todo.pop(0)
        future = asyncio.get_running_loop().run_in_executor(
            self._pool,
            read_partition_members,
            *self._args,
            p,
            start,
            end,
            self._keep,
            self._batch,
        )
        self._next = (p, future)

    def holds(self, p: int) -> bool:
        """True when partition p is the one being read ahead."""
        return self._next is not None and self._next[0] == p

    async def take(self, p: int) -> list[Member] | PinnedMembers:
        """Partition p's members (read ahead), and start reading the next partition."""
        assert self._next is not None and self._next[0] == p, "partitions are taken in order"
        members = await self._next[1]
        self._submit()
        return members

    def close(self) -> None:
        """Stop the worker (a read in progress is abandoned)."""
        if self._next is not None:
            self._next[1].cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Settler:
    """A partition's published chunks, settled in order: the previous chunk's settling (acks,
    checkpoint, stats, pacing) runs while the next chunk is encoded; at most two chunks wait."""

    def __init__(self, fanout: FanOut, job: _Job, p: int) -> None:
        self.fanout = fanout
        self.job = job
        self.p = p
        self.pending: tuple[list[Any], int, int, int] | None = None
        self.running: asyncio.Task[bool] | None = None

    async def add(self, futures: list[Any], count: int, offset: int, errors: int = 0) -> bool:
        """A chunk sent; False when settling an earlier one found the checkpoint moved."""
        if self.running is not None and not await self.running:
            self.running = None
            return False
        self.running = None
        if self.pending is not None:
            self.running = asyncio.create_task(self.fanout._settle(self.job, self.p, *self.pending))
        self.pending = (futures, count, offset, errors)
        if self.job.rate and self.running is not None:
            # A paced fire sleeps while settling: it must not run a chunk further ahead.
            ok = await self.running
            self.running = None
            return ok
        return True

    def abandon(self) -> None:
        """The partition's loop failed: stop settling (the checkpoint stays where it was)."""
        if self.running is not None:
            self.running.cancel()
            self.running = None

    async def drain(self) -> bool:
        """Settle everything sent; False when a checkpoint had moved."""
        ok = True
        if self.running is not None:
            ok = await self.running
            self.running = None
        if ok and self.pending is not None:
            ok = await self.fanout._settle(self.job, self.p, *self.pending)
        self.pending = None
        return ok


class _Job:
    """One fan-out run's state."""

    def __init__(
        self, *, fire: Doc, ref: CampaignRef, encoder: RequestEncoder, out_topic: str
    ) -> None:
        self.fire = fire
        self.ref = ref
        self.encoder = encoder
        self.out_topic = out_topic
        self.trigger_key: str = fire["trigger_key"]
        self.request_id = RequestIds(ref.id, self.trigger_key)
        self.audience: str | None = fire.get("audience")
        # Per customer, their cases as a JSON array (only when the audience reads `cases`).
        self.cases: dict[str, bytes] | None = None
        self.rate: float | None = fire.get("rate_per_second")
        self.cp_part: int = fire["cp_part"]
        self.cp_off: int = fire["cp_off"]
        self.published = 0
        # The last checkpoint's stats count (its name), applied: the next one removes its record.
        self.stats_op: str | None = None
        # Customers the audience filter failed for: while encoding, and as checkpointed.
        self.audience_errors = 0
        self.settled_errors = 0
        self.read_ahead = 0  # partitions the read-ahead worker read
        self.same_partitions = False
        self.outcome: str | None = None
        self.partition_count = 0
        self.producer: AIOKafkaProducer  # the fan-out's own, with large record batches
        self.started = time.monotonic()

    def count_lost(self, members: int) -> None:
        """Audience members the fan-out found no record for when it came to publish (compacted
        away since it found them): not contacted, and counted with the audience errors."""
        self.audience_errors += members

    async def pace(self) -> None:
        """Sleep until the published count fits the campaign's rate."""
        if self.rate:
            ahead = self.published / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                await asyncio.sleep(ahead)


def fire_row(
    doc: Doc,
    ref: CampaignRef,
    scheduled: datetime,
    trigger_key: str,
    ends: dict[str, int],
    case_ends: dict[str, int] | None = None,
) -> Doc:
    """A fire row for a campaign version at a scheduled time, over the audience (and, when its
    filter reads them, the cases) as of now."""
    d = doc["definition"]
    return {
        "_id": f"{doc['_id']}|{trigger_key}",
        "campaign_id": doc["_id"],
        "campaign": ref.model_dump(mode="json"),
        "trigger_key": trigger_key,
        "scheduled_at": scheduled,
        "audience": d["trigger"].get("audience"),
        "rate_per_second": d.get("limits", {}).get("rate_per_second"),
        "expires_after_seconds": d.get("timing", {}).get("expires_after_seconds"),
        "ends": ends,
        "case_ends": case_ends,
        "done": False,
        "created_at": utc_now(),
    }
