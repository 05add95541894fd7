"""Recurring and one-off audience campaigns under APScheduler 3.x, on one replica at a time.

The replica holding the lease runs an APScheduler whose jobs live in MongoDB (APScheduler's
MongoDBJobStore, which works against FerretDB v1 through PyMongo's sync client); the others stand
by and take over when the holder stops renewing. Each fire is recorded by its scheduled time
before anything is published, so a double fire (two holders during a takeover, a misfire replay)
emits nothing new. A fire is marked due before APScheduler's job store moves past its time, so
one whose holder died before recording it is fired by the next leader.

Every call into that job store blocks its thread while the database is away, so none runs on
the event loop: APScheduler runs in its own thread (BackgroundScheduler), the leader's reconcile
calls it from worker threads, and the job store's client gives up after JOB_STORE_TIMEOUT_MS
rather than PyMongo's 30 s. The API, the readiness probe, timers and Kafka heartbeats keep
running through a database outage, and APScheduler's thread outlives a failed job store call
(`_SurvivingScheduler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from threading import TIMEOUT_MAX
from typing import Any

from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore, JobLookupError
from apscheduler.jobstores.mongodb import MongoDBJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED, BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from herald_contracts import utc_now
from herald_kit import Doc, NotFound, cancel_and_wait
from herald_scheduler.adapters.audience import DUE_COLLECTION, FireRepository, Lease, mark_due
from herald_scheduler.adapters.campaigns import CampaignRepository
from herald_scheduler.domain.campaigns import (
    ScheduleTrigger,
    WallClockCronTrigger,
    audience_reads_cases,
    definition_of,
    fire_key,
)
from herald_scheduler.messaging.fanout import FanOut, fire_row
from herald_scheduler.messaging.matcher import campaign_ref
from herald_scheduler.metrics import JOB_STORE_ERRORS, LEADER

log = logging.getLogger("herald.scheduler.schedules")

# A fire later than this after its time is skipped, whether APScheduler or a due marker holds it.
MISFIRE_GRACE = timedelta(hours=1)
# How long a call of the job store's sync client waits for an unreachable database (server
# selection, connecting, an answer) before it fails, and the next tick or wake-up tries again.
JOB_STORE_TIMEOUT_MS = 2_000
# How soon APScheduler's thread looks for due jobs again after a job store call failed.
JOB_STORE_RETRY_SECONDS = 1.0


def _noop() -> None:
    """The jobs' stored callable; firing goes through FireExecutor, which needs the fire time."""


async def _cancel_all(tasks: dict[str, asyncio.Task[int]]) -> None:
    """Cancel the tasks and wait for each to end, emptying the collection."""
    while tasks:
        pending = list(tasks.values())
        tasks.clear()
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class FireExecutor(BaseExecutor):  # type: ignore[misc]
    """Hands each due run time to the runner: APScheduler 3 does not pass it to job functions."""

    def __init__(self, on_fire: Callable[[str, datetime], None]) -> None:
        super().__init__()
        self.on_fire = on_fire

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        for run_time in run_times:
            self.on_fire(job.id, run_time)
        self._run_job_success(job.id, [])


class _SurvivingScheduler(BackgroundScheduler):  # type: ignore[misc]
    """A BackgroundScheduler whose thread outlives a failed job store call.

    APScheduler 3 catches a failed read of the due jobs, but not a failed write after it (moving
    a handed-over job past its time, removing a finished one): that error ends its thread for
    good, while the scheduler still reports running and the leader keeps its lease, so no
    campaign would fire again until a restart. Here the error is logged (by type) and counted
    (`herald_scheduler_job_store_errors_total`), and the thread looks again after
    JOB_STORE_RETRY_SECONDS. A job whose write failed is still due then and is handed over
    again: its fire id is the same, so that fire is recorded once.
    """

    def _main_loop(self) -> None:
        wait_seconds: float | None = TIMEOUT_MAX
        while self.state != STATE_STOPPED:
            self._event.wait(wait_seconds)
            self._event.clear()
            try:
                wait_seconds = self._process_jobs()
            except Exception as exc:
                JOB_STORE_ERRORS.inc()
                log.warning(
                    "job store call failed; looking for due jobs again shortly",
                    extra={"error": type(exc).__name__},
                )
                wait_seconds = JOB_STORE_RETRY_SECONDS


class ScheduleRunner:
    """Holds the lease, keeps APScheduler's jobs in line with active campaigns, runs fan-outs."""

    def __init__(
        self,
        *,
        campaigns: CampaignRepository,
        fires: FireRepository,
        fanout: FanOut,
        lease: Lease,
        mongo_uri: str,
        mongo_db: str,
        tick_seconds: float,
    ) -> None:
        self.campaigns = campaigns
        self.fires = fires
        self.fanout = fanout
        self.lease = lease
        self.mongo_uri = mongo_uri
        self.mongo_db = mongo_db
        self.tick_seconds = tick_seconds
        self.leading = False
        self._scheduler: BaseScheduler | None = None
        self._sync_client: MongoClient[Doc] | None = None
        # APScheduler hands fires over from its own thread; they are started on this loop.
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._fanouts: dict[str, asyncio.Task[int]] = {}
        self._firing: dict[str, asyncio.Task[None]] = {}
        self._unschedulable: set[str] = set()  # "campaign|version" already logged

    def start(self) -> None:
        """Start competing for the lease."""
        self._task = asyncio.create_task(self._run(), name="schedules")

    async def stop(self) -> None:
        """Stop jobs and fan-outs, then hand the lease over."""
        try:
            await cancel_and_wait(self._task)
        finally:
            was_leading = self.leading
            await self._step_down()
            if was_leading:
                await self.lease.release()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("schedule tick failed")
            await asyncio.sleep(self.tick_seconds)

    async def tick(self) -> None:
        """Renew or take the lease; as leader, reconcile jobs and resume unfinished fires."""
        if await self.lease.acquire(now=utc_now()):
            if not self.leading:
                await self._take_over()
            await self._reconcile()
            await self._fire_due()
            for fire in await self.fires.unfinished():
                self._spawn(fire["_id"])
        elif self.leading:
            log.warning("schedule lease lost; standing by")
            await self._step_down()

    def _job_store(self) -> BaseJobStore:
        """APScheduler's job store in the service's database, through its own sync client."""
        self._sync_client = MongoClient(
            self.mongo_uri,
            tz_aware=True,
            retryWrites=False,
            serverSelectionTimeoutMS=JOB_STORE_TIMEOUT_MS,
            connectTimeoutMS=JOB_STORE_TIMEOUT_MS,
            socketTimeoutMS=JOB_STORE_TIMEOUT_MS,
        )
        return MongoDBJobStore(
            database=self.mongo_db, collection="apscheduler_jobs", client=self._sync_client
        )

    async def _take_over(self) -> None:
        log.info("schedule lease taken", extra={"holder": self.lease.holder})
        scheduler = _SurvivingScheduler(
            jobstores={"default": self._job_store()},
            executors={"default": FireExecutor(self._on_fire)},
            job_defaults={
                "coalesce": False,
                "misfire_grace_time": int(MISFIRE_GRACE.total_seconds()),
                "max_instances": 1,
            },
            timezone="UTC",
        )
        try:
            # Starting the job store creates its index: a database call.
            await asyncio.to_thread(scheduler.start)
        except BaseException:
            # Not leading yet: the next tick takes over again, with a new client.
            client, self._sync_client = self._sync_client, None
            if client is not None:
                await asyncio.to_thread(client.close)
            raise
        self._scheduler = scheduler
        self.leading = True
        LEADER.set(1)

    def _on_fire(self, job_id: str, run_time: datetime) -> None:
        """APScheduler hands a due run time over (from its own thread) and then moves the job
        past it in its store. The due marker goes first, synchronously, so a replica killed
        before the fire is recorded leaves it for the next leader; the fire itself runs on the
        event loop."""
        fire_id = f"{job_id}|{fire_key(run_time)}"
        if self._sync_client is not None:
            try:
                mark_due(
                    self._sync_client[self.mongo_db][DUE_COLLECTION], fire_id, job_id, run_time
                )
            except PyMongoError as exc:  # the fire still runs; only a crash now would lose it
                log.warning(
                    "due marker not written", extra={"fire": fire_id, "error": type(exc).__name__}
                )
        self._loop.call_soon_threadsafe(self._start_fire, fire_id, job_id, run_time)

    def _start_fire(self, fire_id: str, campaign_id: str, scheduled: datetime) -> None:
        if fire_id in self._firing:
            return
        task = asyncio.get_running_loop().create_task(self._fire(campaign_id, scheduled))
        self._firing[fire_id] = task
        task.add_done_callback(lambda _: self._firing.pop(fire_id, None))

    async def _fire_due(self) -> None:
        """Fire what a holder was handed and did not record (it died in between)."""
        now = utc_now()
        for marker in await self.fires.due_markers():
            if now - marker["scheduled"] > MISFIRE_GRACE:
                log.warning("due fire past its grace time skipped", extra={"fire": marker["_id"]})
                await self.fires.settled(marker["_id"])
            else:
                self._start_fire(marker["_id"], marker["campaign_id"], marker["scheduled"])

    async def _step_down(self) -> None:
        """Stop firing, let the fires in flight record themselves, then stop every fan-out.

        A fire is not cancelled: APScheduler has already moved its job past that time, so a
        fire cut off before its row is written would be lost for good. Recorded after the
        step-down, it starts no fan-out here (`_spawn` needs the lease; a fan-out started now,
        with its own Kafka clients, would outlive the stop) and the next leader resumes it.
        """
        self.leading = False
        LEADER.set(0)
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            # Waits for APScheduler's thread, which may be in a job store call; the fires it
            # handed over before it ended are on the loop's queue ahead of this await's end.
            await asyncio.to_thread(scheduler.shutdown, wait=False)
        while self._firing:
            await asyncio.gather(*list(self._firing.values()), return_exceptions=True)
        await _cancel_all(self._fanouts)
        client, self._sync_client = self._sync_client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    def job_ids(self) -> set[str]:
        """The campaigns this replica has scheduled (none while standing by). A job store
        read on the calling thread: for tests and diagnostics, not for the event loop."""
        if self._scheduler is None:
            return set()
        return {job.id for job in self._scheduler.get_jobs()}

    async def _reconcile(self) -> None:
        """One job per active schedule campaign, named by its version; others removed."""
        scheduler = self._scheduler
        assert scheduler is not None
        wanted = {d["_id"]: d for d in await self.campaigns.active_schedules()}
        # Each job store call runs in a worker thread (see the module's docstring).
        for job in await asyncio.to_thread(scheduler.get_jobs):
            doc = wanted.get(job.id)
            # A job stored with APScheduler's own cron trigger (an earlier version) goes too:
            # it fires a time the clocks repeat twice and skips one they jump over; so does one
            # stored before the day rule (`either_day`) was kept, which reads both days as AND.
            legacy = isinstance(job.trigger, CronTrigger) and (
                not isinstance(job.trigger, WallClockCronTrigger) or job.trigger.either_day is None
            )
            if doc is None or job.name != f"v{doc['version']}" or legacy:
                with contextlib.suppress(JobLookupError):  # a concurrent tick removed it
                    await asyncio.to_thread(scheduler.remove_job, job.id)
        have = {job.id for job in await asyncio.to_thread(scheduler.get_jobs)}
        for cid, doc in wanted.items():
            if cid in have:
                continue
            # One campaign that cannot be scheduled (a definition saved before a check existed)
            # must not keep every other campaign from firing: it is logged once per version.
            try:
                await asyncio.to_thread(self._schedule, scheduler, cid, doc)
            except Exception as exc:
                failed = f"{cid}|v{doc.get('version')}"
                if failed not in self._unschedulable:
                    self._unschedulable.add(failed)
                    log.error(
                        "campaign cannot be scheduled; it will not fire",
                        extra={"campaign": cid, "error": type(exc).__name__},
                    )

    def _schedule(self, scheduler: BaseScheduler, cid: str, doc: Doc) -> None:
        """Add the campaign's job, unless its schedule has no fire to come."""
        trigger = definition_of(doc).trigger
        assert isinstance(trigger, ScheduleTrigger)
        aps = trigger.apscheduler_trigger()
        if aps.get_next_fire_time(None, utc_now()) is None:
            return  # a one-off time already past, or a schedule with no more fires
        scheduler.add_job(_noop, aps, id=cid, name=f"v{doc['version']}", replace_existing=True)

    async def _fire(self, campaign_id: str, scheduled: datetime) -> None:
        """Record the fire and start its fan-out; its due marker goes once that is settled (a
        failure keeps it, and the next tick tries again)."""
        key = fire_key(scheduled)
        try:
            await self._record_fire(campaign_id, scheduled, key)
            await self.fires.settled(f"{campaign_id}|{key}")
        except Exception:
            log.exception("fire failed", extra={"campaign": campaign_id})

    async def _record_fire(self, campaign_id: str, scheduled: datetime, key: str) -> None:
        try:
            doc = await self.campaigns.get(campaign_id)
        except NotFound:
            return  # the campaign is gone
        if doc["status"] != "active":
            return
        if await self.fires.get(f"{campaign_id}|{key}") is not None:
            return  # fired already (a double fire or a replay): nothing new
        ends = await self.fanout.audience_ends()
        audience = doc["definition"]["trigger"].get("audience")
        case_ends = (
            await self.fanout.audience_ends(cases=True) if audience_reads_cases(audience) else None
        )
        row = fire_row(doc, campaign_ref(doc), scheduled, key, ends, case_ends)
        if await self.fires.begin(row):
            log.info("campaign fired", extra={"campaign": campaign_id, "trigger": key})
            self._spawn(row["_id"])

    def _spawn(self, fire_id: str) -> None:
        if not self.leading:
            return  # stepped down while the fire was recorded: the next leader resumes it
        task = self._fanouts.get(fire_id)
        if task is not None and not task.done():
            return
        task = asyncio.create_task(self.fanout.run(fire_id), name=f"fanout:{fire_id}")
        self._fanouts[fire_id] = task

        def _done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.error("fan-out failed", extra={"fire": fire_id, "error": str(t.exception())})

        task.add_done_callback(_done)
