"""A whole-system scenario shared by the chaos runs, the e2e benchmarks and the security checks.

N customers, each with one case; one event per case; one event-triggered SMS campaign. Every
tenth customer has not consented to the campaign's topic, so the right outcome for them is
"suppressed" and any SMS to them is a breach. After the run, `reconcile` accounts for every
contact request from what the system itself recorded (the contact.requests topic, the
dispatcher's decisions, delivery statuses) and what the provider (the sandbox) received.

Written to extend: a new channel adds its sandbox listing to `provider_messages`; a new
outcome (deferred, escalated) is already a row of the table.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo import AsyncMongoClient

from herald_contracts import ContactRequest, DeliveryStatus, Topics, dlq_topic
from herald_devstack import Stack, StackConfig
from herald_kit import DecodeError, decode
from support import TEST_KEY, consumer_lag, daytime_zone, phone_in, registered_consumers

ROOT = Path(__file__).resolve().parents[2]
# Fictional-range numbers in several valid US area codes: 10,000 customers per area code.
TOPIC = "service-updates"
TEMPLATE = "Case {{ case.case_id }}: {{ case.status }}"
# Services a chaos run may kill: every Herald service. The sandbox stands in for Twilio, an
# outside provider whose memory is the evidence, so it is never killed.
HERALD_SERVICES = (
    "preferences",
    "ingest",
    "scheduler",
    "dispatcher",
    "sms-sender",
    "email-sender",
    "voice-sender",
)
RETRY_STATUSES = {429, 500, 502, 503, 504}


def phone_of(i: int, zone: str) -> str:
    """The phone number of customer i, who lives in `zone` (unique up to a million customers)."""
    return phone_in(zone, i)


@dataclass
class Scenario:
    """The customers, cases and events of one run, and how to drive them through a stack."""

    stack: Stack
    size: int
    api_key: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    suppress_every: int = 10
    # Where every customer lives: daytime when the run starts, so the legal windows allow it.
    zone: str = field(default_factory=daytime_zone)
    customers: int = 0  # 0: one customer per event; fewer: customers get several cases
    posted_at: dict[int, float] = field(default_factory=dict)  # customer index -> wall time
    posting_took: float = 0.0  # seconds the last post_events call took
    # What the sandbox holds, read incrementally (a full listing of many thousand SMS per poll
    # would cost the sandbox more CPU than sending them).
    _provider_seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        """Authorization header for the stack's APIs."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def customer(self, i: int) -> str:
        """Customer id of index i."""
        return f"{self.run_id}-c{i}"

    @property
    def n_customers(self) -> int:
        """How many customers the events are spread over."""
        return self.customers or self.size

    def index_of_phone(self) -> dict[str, int]:
        """Phone number -> customer index."""
        return {phone_of(i, self.zone): i for i in range(self.n_customers)}

    def case_id(self, i: int) -> str:
        """The case of event i."""
        return f"{self.run_id}-k{i}"

    def consents(self, i: int) -> bool:
        """Whether customer i agreed to the campaign's topic by SMS (0: everyone did)."""
        return self.suppress_every == 0 or i % self.suppress_every != 0

    def contact(self, i: int) -> dict[str, Any]:
        """The contact record of customer i."""
        return {
            "customer_id": self.customer(i),
            "channels": {"sms": phone_of(i, self.zone)},
            "ranking": ["sms"],
            "consents": {TOPIC: {"sms": self.consents(i)}},
            "locale": "en-GB",
            "time_zone": self.zone,
        }

    def event(self, i: int) -> dict[str, Any]:
        """The one business event about customer i's case."""
        return {
            "specversion": "1.0",
            "id": f"{self.run_id}-e{i}",
            "source": "/crm/cases",
            "type": "case.updated",
            "data": {
                "case_id": self.case_id(i),
                "customer_ids": [self.customer(i % self.n_customers)],
                "status": "engineer booked for 14:00",
                "sequence": 1,
            },
        }

    async def _post(
        self,
        http: httpx.AsyncClient,
        url: str,
        body: Any,
        *,
        ok: Iterable[int],
        within: float,
        ndjson: bool = False,
    ) -> httpx.Response:
        """POST until an answer in `ok`; a backend retries through outages, so do we."""
        deadline = time.monotonic() + within
        delay = 0.2
        while True:
            try:
                if ndjson:
                    r = await http.post(
                        url, content=body, headers={"Content-Type": "application/x-ndjson"}
                    )
                else:
                    r = await http.post(url, json=body)
                if r.status_code in ok:
                    return r
                if r.status_code not in RETRY_STATUSES:
                    raise AssertionError(f"POST {url} -> {r.status_code}: {r.text[:300]}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"POST {url} kept failing for {within:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)

    async def seed(self, *, concurrency: int = 2, rows_per_import: int = 1000) -> None:
        """Create every contact (through the bulk import, as an operator would) and one active
        campaign."""
        url = f"{self.stack.url('preferences')}/v1/contacts/import"
        queue: asyncio.Queue[range] = asyncio.Queue()
        for start in range(0, self.n_customers, rows_per_import):
            queue.put_nowait(range(start, min(start + rows_per_import, self.n_customers)))

        async def worker(http: httpx.AsyncClient) -> None:
            while not queue.empty():
                rows = queue.get_nowait()
                body = "\n".join(json.dumps(self.contact(i)) for i in rows)
                r = await self._post(http, url, body, ok={200}, within=180, ndjson=True)
                # 409 rows: an earlier attempt created them before its answer was lost.
                bad = [e for e in r.json()["errors"] if e["status"] != 409]
                if bad:
                    raise AssertionError(f"import refused rows: {bad[:3]}")

        async with httpx.AsyncClient(headers=self.auth, timeout=30) as http:
            await asyncio.gather(*(worker(http) for _ in range(concurrency)))
            r = await self._post(
                http,
                f"{self.stack.url('scheduler')}/v1/campaigns",
                {
                    "name": f"Case updates {self.run_id}",
                    "topic": TOPIC,
                    "trigger": {"kind": "event", "event_types": ["case.updated"]},
                    "messages": {"sms": {"en": {"body": TEMPLATE}}},
                },
                ok={201},
                within=60,
            )
            campaign = r.json()["id"]
            await self._post(
                http,
                f"{self.stack.url('scheduler')}/v1/campaigns/{campaign}/activate",
                None,
                ok={200},
                within=60,
            )

    async def wait_views(self, *, within: float = 300) -> None:
        """Wait until the dispatcher's view holds every contact: a request about a customer
        whose snapshot has not arrived yet is dead-lettered (UnknownCustomer) by design."""
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.stack.config.mongo_uri, tz_aware=True
        )
        try:
            db = client[f"herald_dispatcher{self.stack.config.db_suffix}"]
            deadline = time.monotonic() + within
            while await db["view_contacts"].count_documents({}) < self.n_customers:
                if time.monotonic() > deadline:
                    raise AssertionError("the dispatcher's contact view did not catch up")
                await asyncio.sleep(0.5)
        finally:
            await client.close()

    async def post_events(
        self,
        indices: Iterable[int],
        *,
        rate: float | None,
        batch: int = 10,
        concurrency: int = 1,
        within: float = 300,
    ) -> None:
        """Post the events of the given customers, `batch` per request, paced at `rate`/s
        (None: as fast as `concurrency` posters go). Records when each was posted."""
        chunks: list[list[int]] = []
        current: list[int] = []
        for i in indices:
            current.append(i)
            if len(current) == batch:
                chunks.append(current)
                current = []
        if current:
            chunks.append(current)
        url = f"{self.stack.url('ingest')}/v1/events"
        start = time.monotonic()  # set again once the posters exist
        queue: asyncio.Queue[tuple[int, list[int]]] = asyncio.Queue()
        for n, chunk in enumerate(chunks):
            queue.put_nowait((n, chunk))

        async def worker(http: aiohttp.ClientSession) -> None:
            while not queue.empty():
                n, chunk = queue.get_nowait()
                if rate is not None:
                    due = start + n * batch / rate
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                sent_at = time.time()
                body = [self.event(i) for i in chunk]
                answer = await self._post_events(http, url, body, within=within)
                rejected = [x for x in answer["results"] if x["result"] == "rejected"]
                assert not rejected, rejected
                for i in chunk:
                    self.posted_at.setdefault(i, sent_at)

        # One aiohttp session (a connection per poster): the load generator shares the machine
        # with the system it measures, and httpx took a third of a core at 200 posts/s.
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(
            headers=self.auth, connector=connector, timeout=timeout
        ) as http:
            start = time.monotonic()
            await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        self.posting_took = time.monotonic() - start

    async def _post_events(
        self, http: aiohttp.ClientSession, url: str, body: Any, *, within: float
    ) -> Any:
        """POST a batch of events until ingest accepts it (202); retried through outages."""
        deadline = time.monotonic() + within
        delay = 0.2
        while True:
            try:
                async with http.post(url, json=body) as r:
                    if r.status == 202:
                        return await r.json()
                    if r.status not in RETRY_STATUSES:
                        text = await r.text()
                        raise AssertionError(f"POST {url} -> {r.status}: {text[:300]}")
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"POST {url} kept failing for {within:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)

    async def provider_messages(self) -> list[dict[str, Any]]:
        """Every message the sandbox (the provider) accepted in this stack."""
        async with httpx.AsyncClient(timeout=60) as http:
            r = await http.get(
                f"{self.stack.url('sandbox')}/sandbox/api/sms",
                params={"after": len(self._provider_seen)},
            )
            r.raise_for_status()
            self._provider_seen.extend(r.json()["items"])
            return list(self._provider_seen)

    def decisions_collection(self, client: AsyncMongoClient[dict[str, Any]]) -> Any:
        """The dispatcher's decisions collection in this stack's database."""
        return client[f"herald_dispatcher{self.stack.config.db_suffix}"]["decisions"]

    async def wait_settled(
        self, mongo_uri: str, kafka: str, *, within: float, quiet: float = 10.0
    ) -> None:
        """Wait until every customer has a decision and every consumer group has committed past
        the end of what it reads (nothing is in flight: not a sender's batch held by a provider
        timeout, not a request waiting for its view); then until the provider's count holds
        still for `quiet` seconds or matches the decisions to send."""
        ns = self.stack.config.namespace
        groups = {
            f"{ns}{group}": [t.name(ns) for t in topics]  # type: ignore[attr-defined]
            for group, topics in registered_consumers().items()
        }
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
        try:
            coll = self.decisions_collection(client)
            deadline = time.monotonic() + within
            last, still_since = -1, time.monotonic()
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                try:
                    decided = len(await coll.distinct("request_id"))
                    sent = await coll.count_documents({"outcome": "sent"})
                    lag = await consumer_lag(kafka, groups)
                except Exception:  # the database or the broker may be the fault under test
                    lag = {"unknown": 1}
                    decided = sent = 0
                delivered = len(await self.provider_messages())
                if delivered != last or any(lag.values()) or decided < self.size:
                    last, still_since = delivered, time.monotonic()
                elif delivered >= sent or time.monotonic() - still_since > quiet:
                    return
        finally:
            await client.close()


async def read_topic(kafka: str, topic: str) -> list[Any]:
    """Every record on a topic, from the beginning to its current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            got = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in got.values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


@dataclass
class Reconciliation:
    """Every contact request's ending, and every way the promises could have been broken."""

    expected: int
    rows: Counter[str]
    anomalies: dict[str, list[str]]
    duplicates: int
    lost: int
    unaccounted: int
    against_wishes: int
    dlq: dict[str, int]
    # Requests the sandbox injected each provider fault into (kind -> count), as it reports them.
    provider_faults: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """No duplicate, nothing lost or unaccounted, no one contacted against their wishes."""
        return not (self.duplicates or self.lost or self.unaccounted or self.against_wishes)

    def table(self) -> str:
        """The reconciliation table, printable."""
        lines = [f"reconciliation of {self.expected:,} contact requests", "-" * 56]
        for name, n in sorted(self.rows.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {name:<44} {n:>9,}")
        lines.append("-" * 56)
        for name, n in (
            ("duplicates at the provider", self.duplicates),
            ("lost (decided 'sent', nothing sent or failed)", self.lost),
            ("unaccounted (no request or no decision)", self.unaccounted),
            ("contacted against their wishes", self.against_wishes),
        ):
            lines.append(f"  {name:<44} {n:>9,}")
        for dlq, n in sorted(self.dlq.items()):
            lines.append(f"  DLQ {dlq:<40} {n:>9,}")
        for kind, samples in self.anomalies.items():
            lines.append(f"  {kind} x{len(samples):,}, e.g. {', '.join(samples[:3])}")
        if self.provider_faults:
            lines.append("-" * 56)
            for kind, n in sorted(self.provider_faults.items()):
                lines.append(f"  {'provider fault injected: ' + kind:<44} {n:>9,}")
        return "\n".join(lines)


async def reconcile(scenario: Scenario, *, kafka: str, mongo_uri: str) -> Reconciliation:
    """Account for every contact request of the scenario."""
    ns = scenario.stack.config.namespace
    requests: dict[str, set[str]] = defaultdict(set)  # customer -> request ids
    for record in await read_topic(kafka, Topics.CONTACT_REQUESTS.name(ns)):
        try:
            req = decode(record, ContactRequest).data
        except DecodeError:
            continue
        requests[req.customer_id].add(req.request_id)
    statuses: dict[str, list[DeliveryStatus]] = defaultdict(list)  # message id -> statuses
    for record in await read_topic(kafka, Topics.DELIVERY_STATUS.name(ns)):
        try:
            st = decode(record, DeliveryStatus).data
        except DecodeError:
            continue
        statuses[st.message_id].append(st)

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    try:
        decisions: dict[str, list[dict[str, Any]]] = defaultdict(list)  # request id -> decisions
        async for d in scenario.decisions_collection(client).find({}, {"_id": 0, "inputs": 0}):
            decisions[d["request_id"]].append(d)
    finally:
        await client.close()

    per_phone = Counter(m["to"] for m in await scenario.provider_messages())
    phone_index = scenario.index_of_phone()
    rows: Counter[str] = Counter()
    anomalies: dict[str, list[str]] = defaultdict(list)
    duplicates = lost = unaccounted = against = 0

    def flag(kind: str, who: str) -> None:
        anomalies[kind].append(who)

    for i in range(scenario.size):
        cust = scenario.customer(i)
        sms = per_phone.get(phone_of(i, scenario.zone), 0)
        if sms > 1:
            duplicates += sms - 1
            flag("duplicate", cust)
        if sms and not scenario.consents(i):
            against += 1
            flag("against-wishes", cust)
        rids = requests.get(cust, set())
        if not rids:
            unaccounted += 1
            rows["unaccounted: no contact request"] += 1
            flag("no-request", cust)
            continue
        for rid in rids:
            outcomes = {d["outcome"] for d in decisions.get(rid, [])}
            if not outcomes:
                unaccounted += 1
                rows["unaccounted: no decision"] += 1
                flag("no-decision", cust)
                continue
            if len(outcomes) > 1:  # e.g. sent, then 'ignored' when redelivered after a kill
                flag(f"several decisions ({'+'.join(sorted(outcomes))})", cust)
            d = decisions[rid][0]
            outcome = d["outcome"]
            if outcome == "sent":
                if sms == 1:
                    rows["sent (exactly one provider message)"] += 1
                elif sms > 1:
                    rows["sent MORE THAN ONCE"] += 1
                else:
                    ended = {s.status for s in statuses.get(d.get("message_id") or "", [])}
                    failed = ended & {"failed", "undelivered", "unknown"}
                    if failed:
                        rows[f"failed: delivery {sorted(failed)[0]}"] += 1
                    else:
                        lost += 1
                        rows["LOST: decided sent, no provider message"] += 1
                        flag("lost", cust)
            elif outcome in ("suppressed", "deferred"):
                rows[f"{outcome} ({d.get('rule')})"] += 1
            else:
                rows[f"{outcome} ({d.get('rule')}: {d.get('detail') or 'no detail'})"] += 1
    strays = sum(n for phone, n in per_phone.items() if phone not in phone_index)
    if strays:
        rows["provider messages to unknown numbers"] += strays
        flag("stray", str(strays))

    dlq: dict[str, int] = {}
    for group in (
        "ingest",
        "scheduler",
        "dispatcher",
        "dispatcher-views",
        "sms-sender",
        "email-sender",
        "voice-sender",
        "preferences",
    ):
        dead = await read_topic(kafka, dlq_topic(group).name(ns))
        if dead:
            dlq[group] = len(dead)
            for record in dead[:3]:
                why = dict(record.headers or ()).get("x-herald-reason", b"?")
                anomalies[f"dlq {group}"].append(why.decode(errors="replace")[:160])
    return Reconciliation(
        expected=scenario.size,
        rows=rows,
        anomalies=dict(anomalies),
        duplicates=duplicates,
        lost=lost,
        unaccounted=unaccounted,
        against_wishes=against,
        dlq=dlq,
    )


# -- faults ---------------------------------------------------------------------------------


@dataclass
class FaultPlan:
    """What a chaos run does to the running system, in order."""

    services: tuple[str, ...] = HERALD_SERVICES
    down_seconds: float = 1.0  # how long a killed service stays dead
    kafka_restart: bool = True
    db_outage_seconds: float = 30.0
    gap_seconds: float = 2.0  # between faults, so each hits work in flight
    # Share of provider requests the sandbox fails, half as 5xx (nothing sent) and half as a
    # timeout (the message is taken but the answer never comes), for the whole run.
    provider_faults: float = 0.10
    provider_timeout_seconds: float = 12.0  # longer than the sms-sender's Twilio timeout (10 s)


def _infra(script: str, action: str) -> None:
    """Stop or start one part of the local infrastructure with the caller's environment."""
    subprocess.run(  # noqa: S603 - our own script
        ["bash", str(ROOT / "deploy" / "local" / script), action],  # noqa: S607
        check=True,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
    )


def restart(stack: Stack, name: str, *, attempts: int = 3) -> None:
    """Start a killed service again and wait until ready; a port briefly held elsewhere on a
    busy machine is retried rather than reported as a Herald failure."""
    for attempt in range(1, attempts + 1):
        try:
            stack.start_one(name)  # refuses a port still held
            stack.wait_ready(120, names=[name])
            return
        except RuntimeError:
            if attempt == attempts:
                raise
            time.sleep(2)


def free_port_offset() -> int:
    """A port offset whose ports lie below the kernel's ephemeral range (32768+), so no
    outgoing connection can hold a service's port when it restarts."""
    return random.randrange(12_000, 17_000, 10)


@contextmanager
def whole_stack(infra: dict[str, str], namespace: str, logs: str) -> Iterator[Stack]:
    """Every service against the real broker and database, isolated by namespace and ports;
    logs kept under .cache/logs/<logs> for the log scan."""
    config = StackConfig(
        kafka_bootstrap=infra["kafka"],
        mongo_uri=infra["mongo"],
        namespace=namespace,
        db_suffix="_" + namespace.strip("."),
        port_offset=free_port_offset(),
        api_key=TEST_KEY,
        log_dir=ROOT / ".cache" / "logs" / logs,
    )
    s = Stack(config)
    try:
        s.start(timeout=120)
        yield s
    finally:
        s.stop()


async def provider_faults(stack: Stack, plan: FaultPlan) -> None:
    """Make the sandbox fail a share of provider requests for the rest of the run."""
    half = plan.provider_faults / 2
    body = {
        "faults": [{"kind": "unavailable", "share": half}, {"kind": "timeout", "share": half}]
        if plan.provider_faults
        else [],
        "timeout_seconds": plan.provider_timeout_seconds,
        "seed": 7,
    }
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{stack.url('sandbox')}/sandbox/api/twilio/behaviour", json=body)
        r.raise_for_status()


async def provider_faults_injected(stack: Stack) -> dict[str, int]:
    """How many provider requests the sandbox failed, by kind, since the plan set its faults."""
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(f"{stack.url('sandbox')}/sandbox/api/twilio/behaviour")
        r.raise_for_status()
        injected: dict[str, int] = r.json()["injected"]
        return injected


async def inject_faults(
    stack: Stack, plan: FaultPlan, log: Callable[[str], None] = print
) -> list[str]:
    """Kill -9 and restart each service in turn, restart Kafka, stop the database; the journal.
    (Provider faults are set before the events are posted: `provider_faults`.)"""
    journal: list[str] = []

    def note(msg: str) -> None:
        line = f"[chaos {time.strftime('%H:%M:%S')}] {msg}"
        journal.append(line)
        log(line)

    async def step(msg: str, fn: Callable[[], Any]) -> None:
        note(msg)
        await asyncio.to_thread(fn)

    for name in plan.services:
        if name not in stack.running:
            continue
        await step(f"kill -9 {name}", lambda n=name: stack.kill(n))  # type: ignore[misc]
        await asyncio.sleep(plan.down_seconds)
        await step(f"restart {name}", lambda n=name: restart(stack, n))  # type: ignore[misc]
        await asyncio.sleep(plan.gap_seconds)
    if plan.kafka_restart:
        await step("stop Kafka", lambda: _infra("kafka.sh", "stop"))
        await step("start Kafka", lambda: _infra("kafka.sh", "start"))
        await step("all ready after Kafka restart", lambda: stack.wait_ready(180))
        await asyncio.sleep(plan.gap_seconds)
    if plan.db_outage_seconds > 0:
        await step("stop the database", lambda: _infra("ferretdb.sh", "stop"))
        await asyncio.sleep(plan.db_outage_seconds)
        await step("start the database", lambda: _infra("ferretdb.sh", "start"))
        await step("all ready after database outage", lambda: stack.wait_ready(180))
    note("faults done")
    return journal


async def run_chaos(
    scenario: Scenario,
    plan: FaultPlan,
    *,
    kafka: str,
    mongo_uri: str,
    rate: float,
    settle_within: float,
    log: Callable[[str], None] = print,
) -> tuple[Reconciliation, list[str]]:
    """Seed, then post every event at `rate`/s while the faults run; settle; reconcile."""
    await scenario.seed()
    await scenario.wait_views()
    await provider_faults(scenario.stack, plan)
    log(
        f"[chaos] seeded {scenario.size:,} contacts; provider faults {plan.provider_faults:.0%} "
        f"(5xx and timeouts); posting events at {rate:g}/s under faults"
    )
    posting: Awaitable[None] = scenario.post_events(
        range(scenario.size), rate=rate, batch=10, within=600
    )
    _, journal = await asyncio.gather(posting, inject_faults(scenario.stack, plan, log))
    log("[chaos] every event accepted; waiting for the system to settle")
    await scenario.wait_settled(mongo_uri, kafka, within=settle_within)
    result = await reconcile(scenario, kafka=kafka, mongo_uri=mongo_uri)
    result.provider_faults = await provider_faults_injected(scenario.stack)
    return result, journal


def write_report(result: Reconciliation, journal: list[str], path: Path) -> None:
    """Keep the table and the fault journal next to the logs for the closing note."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        result.table()
        + "\n\n"
        + "\n".join(journal)
        + "\n\n"
        + json.dumps({"rows": dict(result.rows), "dlq": result.dlq}, indent=2)
        + "\n"
    )
