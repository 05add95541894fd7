"""Kafka conventions: CloudEvents binary mode, an idempotent producer, and a consumer loop that
commits only after the handler's effects are durable and sends what it cannot process to a DLQ."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, NamedTuple, Protocol, TypeVar

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import (
    AuthenticationFailedError,
    BrokerNotAvailableError,
    ClusterAuthorizationFailedError,
    CommitFailedError,
    GroupAuthorizationFailedError,
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    KafkaUnavailableError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    RebalanceInProgressError,
    RecordListTooLargeError,
    RecordTooLargeError,
    ReplicaNotAvailableError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnknownProducerId,
)
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from pydantic import BaseModel, ValidationError
from pymongo.errors import ConnectionFailure, OperationFailure

from herald_contracts import BY_TYPE, SOURCE_PREFIX, EventType, Topic, dlq_topic
from herald_kit._compat import validate_own
from herald_kit._context import TraceContext, current_trace, event_id_var, trace_var
from herald_kit._errors import PermanentError, RetryableError
from herald_kit._metrics import CONSUMED, DLQ, HANDLE_SECONDS, LAG, PRODUCED, labelled
from herald_kit._settings import ServiceSettings

log = logging.getLogger("herald.kafka")
# Errors after which an idempotent producer refuses every later send (see EventProducer.recover).
POISONED_PRODUCER: tuple[type[BaseException], ...] = (OutOfOrderSequenceNumber,)
M = TypeVar("M", bound=BaseModel)


class DecodeError(PermanentError):
    """The bytes on the topic are not a valid Herald event."""


@dataclass(frozen=True, slots=True)
class Event(Generic[M]):
    """A decoded event: its CloudEvents attributes and its validated body."""

    id: str
    type: str
    source: str
    time: datetime | None
    subject: str | None
    data: M
    key: str | None = None
    trace: TraceContext | None = None


class _Client(Protocol):
    async def start(self) -> None: ...


async def _shielded(op: Awaitable[None]) -> None:
    """Run `op` to its end even when the caller is cancelled meanwhile; then re-raise."""
    task = asyncio.ensure_future(op)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


@contextlib.asynccontextmanager
async def broker_wait(seconds: float | None) -> AsyncIterator[None]:
    """Bound a wait for the broker inside a request (`publish_wait_seconds`).

    A send waits for the broker's acknowledgement with no limit of its own while the broker is
    away (aiokafka keeps retrying it), so a request publishing after its write would hang for
    the whole outage. Past `seconds` the wait is cancelled and KafkaTimeoutError raised: a
    passing broker error, which answers 503 with Retry-After over HTTP. A send cut off may
    still reach the broker later; every publisher's event ids are deterministic, and what it
    publishes is published again by its recovery, so that is harmless. None waits as long as
    it takes.
    """
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise KafkaTimeoutError(f"the broker did not acknowledge within {seconds} s") from exc


async def _ended(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait for it to end, however it ends.

    A caller cancelled meanwhile still waits for that end (the task's own clean-up: a last
    commit, a released lease) and then gets its cancellation, instead of having it swallowed
    and running on.
    """
    if task is not None:
        task.cancel()
        await _shielded(_ended(task))


async def start_client(client: _Client) -> None:
    """Start an aiokafka client (producer, consumer or admin client) so that neither a failure
    nor a cancellation leaves a connection open.

    aiokafka's bootstrap keeps its first connection in a local variable while it asks for
    metadata: a cancellation there (a replica stopping while a fan-out starts) leaves that
    connection open, out of reach of the client's stop. So the start runs shielded; a cancelled
    caller waits for it to end, closes the client and re-raises.
    """
    try:
        await _shielded(client.start())
    except BaseException:
        with contextlib.suppress(Exception):
            await stop_client(client)
        raise


async def stop_client(client: _Client) -> None:
    """Stop (or, for the admin client, close) an aiokafka client, to the end even when the
    caller is cancelled meanwhile.

    aiokafka marks a client closed before it flushes and closes its connections: a stop cut
    short by a cancellation (a fan-out finishing just as its replica steps down) would leave
    them open for good, and a second stop would do nothing.
    """
    close = getattr(client, "stop", None) or client.close  # type: ignore[attr-defined]
    await _shielded(close())


def kafka_client_options(settings: ServiceSettings) -> dict[str, Any]:
    """Connection options shared by producers, consumers and the admin client."""
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        # A private cluster CA replaces the system store only for Kafka, not for provider HTTPS.
        opts["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_sasl_mechanism:
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            opts["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return opts


def encode(
    et: EventType,
    data: BaseModel,
    *,
    source: str,
    event_id: str | None = None,
    subject: str | None = None,
    time: datetime | None = None,
    trace: TraceContext | None = None,
) -> tuple[list[tuple[str, bytes]], bytes]:
    """An event in CloudEvents Kafka binary mode: (headers, value)."""
    attributes: dict[str, Any] = {
        "id": event_id or str(uuid.uuid4()),
        "source": source if source.startswith("/") else SOURCE_PREFIX + source,
        "type": et.type,
        "time": time or datetime.now(UTC),
        "datacontenttype": "application/json",
        "dataschema": et.dataschema,
    }
    if subject:
        attributes["subject"] = subject
    # The data as JSON bytes straight from pydantic's serializer (the SDK passes bytes through):
    # a dict for the SDK to json.dumps again cost a third of encoding a record.
    msg = ce_kafka.to_binary_event(
        CloudEvent(attributes, data.__pydantic_serializer__.to_json(data))
    )
    headers = list(msg.headers.items())
    headers.append(("traceparent", (trace or current_trace().child()).header().encode()))
    return headers, msg.value


class _RawData(JSONFormat):
    """The SDK's JSON format that leaves the data as bytes: the model validates them with
    pydantic's own parser, instead of the SDK parsing them into a dict for pydantic to walk."""

    def read_data(self, body: bytes, datacontenttype: str | None) -> bytes | None:
        return body or None


_RAW_DATA = _RawData()


def decode(
    record: ConsumerRecord[bytes, bytes],
    model: type[M] | None = None,
    *,
    unknown_fields: Literal["ignore", "forbid"] = "ignore",
) -> Event[M]:
    """Decode and validate a binary-mode record; DecodeError when it cannot be.

    Herald's own topics carry what any version of Herald wrote: during a rolling update a newer
    producer's records reach older consumers, so fields this version does not know are ignored,
    at any depth (`validate_own`). A topic others publish to passes `unknown_fields="forbid"`:
    there an unknown field is the sender's mistake, named in the DecodeError.
    """
    headers = dict(record.headers or ())
    if "ce_type" not in headers:
        raise DecodeError("missing ce_type header: not a CloudEvent in binary mode")
    try:
        ce = ce_kafka.from_binary(
            ce_kafka.KafkaMessage(headers=headers, key=record.key, value=record.value or b""),
            _RAW_DATA,
            None,
        )
    except Exception as exc:  # the SDK raises several types for bad attributes or bytes
        raise DecodeError(f"invalid CloudEvent: {exc}") from exc
    ce_type = ce.get_type()
    if model is None:
        et = BY_TYPE.get(ce_type)
        if et is None:
            raise DecodeError(f"unknown event type {ce_type!r}", field="ce_type")
        model = et.model  # type: ignore[assignment]
    assert model is not None
    raw = ce.get_data()
    try:
        if unknown_fields == "ignore":
            data = validate_own(model, raw, kind=ce_type)
        elif isinstance(raw, bytes | str):
            data = model.model_validate_json(raw)
        else:
            data = model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "data"
        raise DecodeError(f"schema violation at {where}: {first['msg']}", field=where) from exc
    tp = headers.get("traceparent")
    return Event(
        id=ce.get_id(),
        type=ce_type,
        source=ce.get_source(),
        time=ce.get_time(),
        subject=ce.get_subject(),
        data=data,
        key=record.key.decode() if record.key else None,
        trace=TraceContext.parse(tp.decode(errors="replace") if tp else None),
    )


class EventProducer:
    """Idempotent producer (acks=all) that publishes Herald events under a topic namespace."""

    def __init__(self, settings: ServiceSettings, source: str) -> None:
        self.settings = settings
        self.source = source
        self._producer: AIOKafkaProducer | None = None
        self._restart = asyncio.Lock()

    async def start(self) -> None:
        """Connect."""
        self._producer = await self._started()

    async def _started(self) -> AIOKafkaProducer:
        """A new producer, connected (or the start's error, with nothing left open)."""
        producer = AIOKafkaProducer(
            **kafka_client_options(self.settings),
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            request_timeout_ms=30_000,
        )
        await start_client(producer)
        return producer

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            await stop_client(self._producer)
            self._producer = None

    async def recover(self, exc: BaseException) -> bool:
        """Replace the producer when `exc` says it can no longer publish; True when it did.

        After a broker restart an idempotent producer can be refused every send with
        OutOfOrderSequenceNumber (the broker no longer knows its sequence numbers, and aiokafka
        does not reset them as the Java client does): only a new producer, with a new producer
        id, publishes again. Sends that failed are retried by their callers, and consumers
        dedupe by event id, so nothing is lost or applied twice.

        The new producer takes over only once it has started: one that could not (the broker
        still restarting) is closed, and would hold every later send for good. The refused one
        stays meanwhile, its sends keep failing at once, and the next of them tries again.
        """
        if not isinstance(exc, POISONED_PRODUCER) or self._producer is None:
            return False
        poisoned = self._producer
        async with self._restart:
            if self._producer is not poisoned:
                return True  # another caller replaced it already
            log.warning(
                "producer refused by the broker; starting a new one",
                extra={"error": type(exc).__name__},
            )
            try:
                fresh = await self._started()
            except Exception as start_exc:
                log.warning(
                    "new producer did not start; the next refused send tries again",
                    extra={"error": type(start_exc).__name__},
                )
                return False
            self._producer = fresh
        with contextlib.suppress(Exception):
            await stop_client(poisoned)
        return True

    @property
    def raw(self) -> AIOKafkaProducer:
        """The underlying aiokafka producer."""
        if self._producer is None:
            raise RuntimeError("producer not started")
        return self._producer

    def topic_name(self, topic: Topic) -> str:
        """A topic's name under this service's namespace."""
        return topic.name(self.settings.topic_namespace)

    async def publish(
        self,
        et: EventType,
        data: BaseModel,
        *,
        key: str | None,
        event_id: str | None = None,
        subject: str | None = None,
    ) -> None:
        """Publish and wait for the broker's acknowledgement (durable before we go on)."""
        headers, value = encode(et, data, source=self.source, event_id=event_id, subject=subject)
        await self.send(et.topic, value, key=key, headers=headers)

    async def tombstone(self, topic: Topic, key: str) -> None:
        """A null value for a key on a compacted topic."""
        await self.send(topic, None, key=key, headers=[])

    async def send(
        self,
        topic: Topic | str,
        value: bytes | None,
        *,
        key: str | bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        """Send raw bytes and wait for the acknowledgement."""
        name = topic if isinstance(topic, str) else self.topic_name(topic)
        k = key.encode() if isinstance(key, str) else key
        await self.raw.send_and_wait(name, value, key=k, headers=list(headers))
        labelled(PRODUCED, topic if isinstance(topic, str) else topic.base).inc()

    async def ready(self) -> bool:
        """True when the broker answers a metadata request."""
        if self._producer is None:
            return False
        try:
            return bool(await asyncio.wait_for(self._producer.client.fetch_all_metadata(), 3))
        except (TimeoutError, KafkaError, OSError):
            return False


Handler = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]]

# Failures of our own infrastructure: never a reason to drop a message, so retried until the
# dependency is back (offsets stay uncommitted meanwhile). A Kafka error that no retry can cure
# is the exception (see is_permanent_kafka_error).
INFRA_ERRORS: tuple[type[BaseException], ...] = (ConnectionFailure, KafkaError, OSError)
# A record the broker (or the producer, before sending) will refuse however often it is sent.
TOO_LARGE: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
)
# Kafka errors aiokafka does not mark retriable that still pass by themselves or once our own
# set-up is fixed (an outage, a restarted or rebalancing cluster, a producer being replaced,
# missing rights): dead-lettering every record meanwhile would empty the topic into the DLQ.
_PASSING_KAFKA_ERRORS: tuple[type[KafkaError], ...] = (
    KafkaTimeoutError,
    KafkaUnavailableError,
    BrokerNotAvailableError,
    ReplicaNotAvailableError,
    RebalanceInProgressError,
    CommitFailedError,
    IllegalStateError,
    ProducerClosed,
    ProducerFenced,
    InvalidProducerEpoch,
    UnknownProducerId,
    *POISONED_PRODUCER,
    AuthenticationFailedError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)


def is_permanent_kafka_error(exc: BaseException) -> bool:
    """True for a Kafka error that sending the same record again would meet again: one too
    large for the broker (aiokafka raises it before sending, for a record over
    `max_request_size`), or one aiokafka marks not retriable, bar those that pass by themselves."""
    if isinstance(exc, TOO_LARGE):
        return True
    return (
        isinstance(exc, KafkaError)
        and type(exc) is not KafkaError  # aiokafka's catch-all, raised for outages too
        and not exc.retriable
        and not isinstance(exc, _PASSING_KAFKA_ERRORS)
    )


# Server answers that mean "try again": SQLite busy under FerretDB, MongoDB shutdowns/elections.
_TRANSIENT_DB_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


def is_transient_db_error(exc: BaseException) -> bool:
    """True for database refusals that pass by themselves (busy, locked, stepping down)."""
    if isinstance(exc, ConnectionFailure):
        return True
    if not isinstance(exc, OperationFailure):
        return False
    text = str(exc).lower()
    return (
        exc.code in _TRANSIENT_DB_CODES
        or exc.has_error_label("RetryableWriteError")
        or "database is locked" in text
        or "busy" in text
    )


class PartitionShare(NamedTuple):
    """One group member's part of its topics' partitions, as the last rebalance assigned it."""

    group: str
    owned: int
    total: int


AssignmentHook = Callable[[PartitionShare], None]


class _Rebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells a loop of its group's rebalances."""

    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Called before every join, the first included: until it completes, no member.
        self.loop._member = False
        await self.loop._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.loop._member = True
        self.loop._rebalanced(set(assigned))
        self.loop._assigned(set(assigned))


@dataclass
class ConsumerLoop:
    """Consume topics as one group; handle each record; commit after; DLQ what can't be handled.

    The handler must be idempotent: a crash before the commit redelivers the batch.
    """

    settings: ServiceSettings
    producer: EventProducer
    group: str
    topics: list[Topic]
    handler: Handler
    batch: int = 200
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False
    _stop_by: float | None = None  # event-loop time at which records in flight are cancelled
    _handling: bool = False  # the loop's task is handling (or committing) a polled batch
    handled: int = 0
    _positions: dict[TopicPartition, int] = field(default_factory=dict)
    _assignment_hooks: list[AssignmentHook] = field(default_factory=list)
    _member: bool = False  # the group's last rebalance completed (with or without partitions)

    @property
    def group_id(self) -> str:
        """The Kafka group id under the namespace."""
        return f"{self.settings.topic_namespace}{self.group}"

    @property
    def dlq(self) -> str:
        """This group's dead-letter topic."""
        return dlq_topic(self.group).name(self.settings.topic_namespace)

    async def start(self) -> None:
        """Join the group and start the loop in the background."""
        self._consumer = AIOKafkaConsumer(
            **kafka_client_options(self.settings),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=300_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
        )
        self._consumer.subscribe(
            [t.name(self.settings.topic_namespace) for t in self.topics], listener=self._listener()
        )
        await start_client(self._consumer)
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.group}")

    def stopping(self) -> None:
        """Take no more records from now on; those being handled have until the stop grace
        (`consumer_stop_grace_seconds`) ends. A service stopping several loops tells them all
        first, so that their graces run together instead of one after the other."""
        if self._stop_by is None:
            self._stop_by = (
                asyncio.get_running_loop().time() + self.settings.consumer_stop_grace_seconds
            )
        self._stopping = True

    def _grace_left(self) -> float:
        """Seconds left of the stop grace (the whole grace when no stop was asked for)."""
        if self._stop_by is None:
            return self.settings.consumer_stop_grace_seconds
        return max(0.0, self._stop_by - asyncio.get_running_loop().time())

    async def stop(self) -> None:
        """Stop polling, let the record being handled finish within the stop grace, then
        leave the group.

        The record being handled when the stop comes may finish (a handler cut short between
        two writes would leave a half-done side effect for the redelivery to meet); the loop
        then takes no other record of its batch, commits up to the one it finished, and ends.
        What still runs when the grace is over is cancelled, and what was not committed is
        redelivered. ConcurrentConsumerLoop drains its records in flight the same way.

        A caller cancelled meanwhile still gets both done (the loop's last commit, leaving the
        group) and then its cancellation: swallowing it would leave the caller running on.
        """
        self.stopping()
        try:
            await self._end_run()
        finally:
            if self._consumer is not None:
                await stop_client(self._consumer)
                self._consumer = None

    async def _end_run(self) -> None:
        """Let the loop's task end by itself within the stop grace (it checks `_stopping`
        before each record), then cancel it; a task polling or idle is cancelled at once. A
        caller cancelled meanwhile cancels it at once, and still waits for it to end."""
        task = self._task
        if task is None:
            return
        try:
            if self._handling and not task.done():
                _, late = await asyncio.wait({task}, timeout=self._grace_left())
                if late:
                    log.warning(
                        "record still being handled when the stop grace ended; cancelled",
                        extra={"group": self.group},
                    )
        finally:
            await cancel_and_wait(task)

    def on_assignment(self, hook: AssignmentHook) -> None:
        """Call `hook` after every rebalance with this member's share of the partitions of the
        loop's topics (register before start). The group splits the partitions among its
        members, so the shares of all replicas add up to the whole: what is divided by them,
        a provider's rate, stays whole however many replicas run."""
        self._assignment_hooks.append(hook)

    def _listener(self) -> ConsumerRebalanceListener:
        return _Rebalances(self)

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        """Before a rebalance moves partitions away (a subclass holding records in flight
        needs to know)."""
        return None

    def _rebalanced(self, assigned: set[TopicPartition]) -> None:
        """After a rebalance: forget the positions of the partitions this member lost and report
        its lag anew, so a topic whose partitions moved to another member reads 0 here, not the
        lag it had (the new owner reports it: summed over the members, as the HPA does, it
        would count twice)."""
        for tp in [tp for tp in self._positions if tp not in assigned]:
            del self._positions[tp]
        if self._consumer is not None:
            self._update_lag(self._consumer)

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        """After a rebalance: `assigned` is this member's whole assignment (aiokafka's eager
        protocol revokes every partition and assigns anew)."""
        if not self._assignment_hooks or self._consumer is None:
            return
        owned = total = 0
        for name in {t.name(self.settings.topic_namespace) for t in self.topics}:
            mine = sum(1 for tp in assigned if tp.topic == name)
            known = self._consumer.partitions_for_topic(name)
            if known is None:
                # The assignment was computed from metadata, so this does not happen; should it,
                # count what is owned as all there is rather than divide by a guess.
                log.warning("partition count unknown", extra={"group": self.group, "topic": name})
            owned += mine
            total += len(known) if known else mine
        share = PartitionShare(self.group, owned, total)
        log.info("partitions assigned", extra={"group": self.group, "owned": owned, "total": total})
        for hook in self._assignment_hooks:
            hook(share)

    def ready(self) -> bool:
        """True while the loop runs as a member of its group: it has joined (its last rebalance
        completed) and its topics exist. A member may own no partition (more replicas than
        partitions, or the rolling update's extra pod while the old ones still run): it takes
        partitions over on the next rebalance, and holding it unready would stall the rollout
        and keep an HTTP service's extra replicas out of traffic. False before the first join,
        while a rebalance is under way, and once the loop has ended."""
        consumer = self._consumer
        return (
            consumer is not None
            and self._task is not None
            and not self._task.done()
            and self._member
            and all(
                consumer.partitions_for_topic(t.name(self.settings.topic_namespace))
                for t in self.topics
            )
        )

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while not self._stopping:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=self.batch)
            except KafkaError as exc:
                log.warning("poll failed, retrying", extra={"group": self.group, "error": str(exc)})
                await asyncio.sleep(1)
                continue
            self._handling = True
            try:
                for tp, records in batches.items():
                    end: int | None = None
                    for record in records:
                        if self._stopping:
                            # Stopping: what was not started stays uncommitted, for redelivery.
                            break
                        await self._handle_one(record)
                        end = record.offset + 1
                    if end is not None:
                        await self._commit(consumer, tp, end)
            finally:
                self._handling = False
            if batches:
                self._update_lag(consumer)

    async def _commit(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        delay = 0.2
        while True:
            try:
                await consumer.commit({tp: offset})
                return
            except KafkaError as exc:
                # A rebalance took the partition: the new owner replays from the last commit.
                if tp not in consumer.assignment():
                    return
                log.warning("commit failed, retrying", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        # Every topic of the loop is reported, 0 for one this member owns no partition of.
        totals = {t.base: 0 for t in self.topics}
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            base = self._base(tp.topic)
            totals[base] = totals.get(base, 0) + max(0, end - self._positions.get(tp, end))
        for base, lag in totals.items():
            LAG.labels(self.group, base).set(lag)

    def _log_failure(
        self, message: str, record: ConsumerRecord[bytes, bytes], exc: BaseException
    ) -> None:
        """Where a record failed and with what, never its contents (they can hold a phone
        number or an address)."""
        log.error(
            message,
            extra={
                "group": self.group,
                "error": type(exc).__name__,
                "topic": self._base(record.topic),
                "partition": record.partition,
                "offset": record.offset,
            },
        )

    def _base(self, topic: str) -> str:
        ns = self.settings.topic_namespace
        return topic[len(ns) :] if ns and topic.startswith(ns) else topic

    async def _handle_one(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Handle one record to its end: handled, or in the DLQ with its reason.

        Never raises but for a cancellation: an error nobody foresaw (in the handler's
        bookkeeping, in the DLQ publish) would otherwise end the loop, or a concurrent loop's
        worker, and hold the partition's commit point for good.
        """
        trace_token = trace_var.set(None)
        event_token = event_id_var.set(None)
        try:
            await self._attempt(record)
        except Exception as exc:
            self._log_failure("record could not be handled", record, exc)
            try:
                await self._to_dlq(record, exc, "consumer-error")
            except Exception as dlq_exc:
                self._log_failure("record could not be dead-lettered; skipped", record, dlq_exc)
        finally:
            trace_var.reset(trace_token)
            event_id_var.reset(event_token)
        self._positions[TopicPartition(record.topic, record.partition)] = record.offset + 1
        self.handled += 1

    async def _attempt(self, record: ConsumerRecord[bytes, bytes]) -> None:
        base = self._base(record.topic)
        attempt = 0
        headers = dict(record.headers or ())
        tp = headers.get("traceparent")
        trace_var.set(TraceContext.parse(tp.decode(errors="replace")) if tp else None)
        ce_id = headers.get("ce_id")
        event_id_var.set(ce_id.decode(errors="replace") if ce_id else None)
        while True:
            try:
                with labelled(HANDLE_SECONDS, self.group, base).time():
                    await self.handler(record)
                labelled(CONSUMED, self.group, base, "ok").inc()
                break
            except PermanentError as exc:
                await self._to_dlq(record, exc, "permanent")
                break
            except RetryableError as exc:
                attempt += 1
                if attempt > self.settings.retry_attempts:
                    await self._to_dlq(record, exc, "retries-exhausted")
                    break
                CONSUMED.labels(self.group, base, "retried").inc()
                await asyncio.sleep(self._backoff(attempt, exc.retry_after))
            except OperationFailure as exc:
                if not is_transient_db_error(exc):
                    await self._to_dlq(record, exc, "database-rejected")
                    break
                attempt += 1
                CONSUMED.labels(self.group, base, "retried").inc()
                await asyncio.sleep(min(self._backoff(attempt, None), 5.0))
            except INFRA_ERRORS as exc:
                if is_permanent_kafka_error(exc):
                    # A derived event too large for the broker, say: sent again, it fails again.
                    await self._to_dlq(record, exc, "kafka-rejected")
                    break
                await self.producer.recover(exc)
                attempt += 1
                CONSUMED.labels(self.group, base, "retried").inc()
                log.warning(
                    "dependency unavailable, retrying",
                    extra={"group": self.group, "error": type(exc).__name__},
                )
                await asyncio.sleep(min(self._backoff(attempt, None), 5.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("handler failed", extra={"group": self.group})
                await self._to_dlq(record, exc, "handler-error")
                break

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        base = self.settings.retry_base_seconds * (2 ** (attempt - 1))
        delay = random.uniform(0, min(base, 30.0))  # noqa: S311 - jitter, not crypto
        return max(delay, retry_after or 0.0)

    async def _to_dlq(
        self, record: ConsumerRecord[bytes, bytes], exc: BaseException, kind: str
    ) -> None:
        """Publish a copy of the record, with why, to this group's DLQ; retried until it is there.

        The copy is always one the broker takes: a record with neither key nor value (which
        aiokafka refuses to send) gets its source topic/partition/offset as key, and a copy the
        broker refuses for good (too large once our headers are added, say) is replaced by a
        reference to that source record, which the reason says.
        """
        reason = str(exc) or type(exc).__name__
        source = f"{record.topic}/{record.partition}/{record.offset}"
        ours = [
            ("x-herald-error", type(exc).__name__.encode()),
            ("x-herald-error-kind", kind.encode()),
            ("x-herald-reason", reason[:2000].encode()),
            ("x-herald-source-topic", record.topic.encode()),
            ("x-herald-source-partition", str(record.partition).encode()),
            ("x-herald-source-offset", str(record.offset).encode()),
            ("x-herald-group", self.group.encode()),
        ]
        field_name = getattr(exc, "field", None)
        if field_name:
            ours.append(("x-herald-field", str(field_name).encode()))
        log.warning(
            "message sent to DLQ",
            extra={
                "group": self.group,
                "kind": kind,
                "error": type(exc).__name__,
                "topic": self._base(record.topic),
                "offset": record.offset,
            },
        )
        value, key = record.value, record.key
        if key is None and value is None:
            key = source.encode()
        headers = list(record.headers or ()) + ours
        whole = True
        delay = 0.2
        while True:
            try:
                await self.producer.send(self.dlq, value, key=key, headers=headers)
                break
            except Exception as err:
                if whole and (is_permanent_kafka_error(err) or not isinstance(err, KafkaError)):
                    # Sent again, the same copy fails again: send the reference instead.
                    whole = False
                    value, key, headers = _reference(record, source, reason, err, ours)
                    continue
                if not isinstance(err, KafkaError):
                    raise  # not an outage: the caller logs where the record is and goes on
                log.warning(
                    "DLQ publish failed, retrying",
                    extra={"group": self.group, "error": type(err).__name__},
                )
                if isinstance(err, KafkaError):
                    await self.producer.recover(err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
        DLQ.labels(self.group, kind).inc()
        CONSUMED.labels(self.group, self._base(record.topic), "dlq").inc()


def _reference(
    record: ConsumerRecord[bytes, bytes],
    source: str,
    reason: str,
    err: BaseException,
    ours: list[tuple[str, bytes]],
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """A DLQ copy that stands for the record: (value, key, headers) naming where it is.

    The record's own headers are left out (they may be what made the copy too large); the
    record itself stays on its source topic, for as long as that topic keeps it.
    """
    size = len(record.value or b"") + len(record.key or b"")
    note = (
        f"{reason[:1500]} [not copied to the DLQ ({type(err).__name__}, {size} bytes of key and"
        f" value): read the record at {source}]"
    )
    headers = [(k, note.encode()) if k == "x-herald-reason" else (k, v) for k, v in ours]
    headers.append(("x-herald-copy", b"reference"))
    value = json.dumps(
        {
            "reason": note,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
        }
    ).encode()
    key = record.key if record.key is not None and len(record.key) <= 1024 else source.encode()
    return value, key, headers


def problem_json(reason: str) -> bytes:
    """A small JSON reason body, for tools that read DLQs."""
    return json.dumps({"reason": reason}).encode()
