"""The outbox: ledger entries and snapshots leave a contact after it is written.

Before a write, the writer leaves a flush marker (`outbox` collection, one per contact or per
import batch). After the write it flushes at once: queued ledger entries are copied to the
ledger (deterministic ids: copying twice is a no-op), the full snapshot (or the erase
tombstone) is published, and the marker is cleared. If Kafka hiccups after the database write,
the marker stays and the republisher loop flushes the contact later: a snapshot is never lost,
and publishing the same version twice is harmless on a compacted topic. The flush a request
runs waits for the broker at most `publish_wait_seconds`: while the broker is away the request
answers as stored, and the republisher publishes once it is back. The flush itself goes on in
the background meanwhile (see `try_flush`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

from aiokafka.errors import KafkaError
from pymongo.errors import PyMongoError

from herald_contracts import CONTACT_PREFERENCES, Topics, utc_now
from herald_kit import Doc, EventProducer, Every, broker_wait, cancel_and_wait, encode
from herald_preferences.adapters.repository import ContactRepository
from herald_preferences.domain.ledger import entry_id
from herald_preferences.domain.service import snapshot

log = logging.getLogger("herald.preferences.outbox")
PASSING = (KafkaError, PyMongoError, OSError)


class Outbox:
    """Flush contacts to the ledger and to contacts.preferences.v1."""

    def __init__(
        self, repo: ContactRepository, producer: EventProducer, *, wait: float | None = None
    ) -> None:
        self.repo = repo
        self.producer = producer
        self.wait = wait  # how long a request's flush may wait for the broker
        self._republisher: Every | None = None
        # Flushes whose requests stopped waiting for them (see try_flush).
        self._detached: set[asyncio.Task[bool]] = set()

    async def intend(self, customer_id: str) -> int:
        """Leave a flush marker before writing; returns the claim to pass to flush."""
        return await self.repo.intend(customer_id, now=utc_now())

    async def _publish(self, doc: Doc) -> None:
        if doc.get("erased"):
            await self.producer.tombstone(Topics.CONTACTS_PREFERENCES, doc["_id"])
            return
        snap = snapshot(doc)
        await self.producer.publish(
            CONTACT_PREFERENCES,
            snap,
            key=snap.customer_id,
            subject=snap.customer_id,
            event_id=f"{snap.customer_id}:{snap.version}",
        )

    async def flush(self, customer_id: str, claim: int | None = None, *, rounds: int = 5) -> bool:
        """Copy queued ledger entries and publish the latest state; clear the marker.

        Publishes again when another writer moved the version meanwhile, so the last value
        published for a key is never older than what is stored. False when it kept moving.

        A contact is only ever deleted once its erase tombstone is out, so a contact gone (or
        erased) after this flush published a snapshot was erased meanwhile, and that tombstone
        may have gone out before the snapshot: the tombstone is published again, or the
        compacted topic's last record would be the erased customer's addresses, which views
        would restore.
        """
        for _ in range(rounds):
            doc = await self.repo.get(customer_id)
            if doc is None:
                break
            pending = doc.get("pending", [])
            await self.repo.copy_to_ledger(pending)
            if pending and not doc.get("erased"):
                # An erase between the read and the copy re-keyed the ledger, and the copy put
                # these entries back under the customer's id (their keyed copies are in: the
                # erase copies the queued entries it reads before re-keying). Take them out
                # again, and publish the tombstone rather than this older snapshot.
                now = await self.repo.get(customer_id)
                if now is None or now.get("erased"):
                    await self.repo.drop_ledger([e["_id"] for e in pending])
                    await self.producer.tombstone(Topics.CONTACTS_PREFERENCES, customer_id)
                    if now is not None:
                        await self.repo.delete_erased(customer_id, now["version"])
                    break
            await self._publish(doc)
            if doc.get("erased"):
                await self.repo.delete_erased(customer_id, doc["version"])
                break
            after = await self.repo.get(customer_id)
            if after is None or after.get("erased"):
                await self.producer.tombstone(Topics.CONTACTS_PREFERENCES, customer_id)
                if after is not None:
                    await self.repo.delete_erased(customer_id, after["version"])
                break
            if after["version"] == doc["version"]:
                break
        else:
            return False
        if claim is not None:
            await self.repo.done(customer_id, claim)
        return True

    async def try_flush(self, customer_id: str, claim: int | None) -> None:
        """flush, but a broker or database hiccup only leaves the contact for the republisher;
        so does a broker that has not acknowledged within `wait` (a send to a broker that is
        away waits without end, and the request with it).

        Past `wait` only the request stops waiting: the flush runs on in the background, owned
        by the outbox. Cutting it off would not take its snapshot back (the producer keeps the
        record queued and delivers it once the broker is back), but would skip the read after
        the acknowledgement; an erase on another replica meanwhile publishes the tombstone and
        deletes the contact, and the snapshot landing after it would leave the erased
        customer's addresses as the compacted topic's last record. Run to its end, the flush
        sees the contact gone and publishes the tombstone again, after the snapshot.
        """
        task = asyncio.create_task(self.flush(customer_id, claim), name="outbox-flush")
        try:
            async with broker_wait(self.wait):
                await asyncio.shield(task)
        except PASSING as exc:
            log.warning("flush deferred to the republisher", extra={"error": type(exc).__name__})
        finally:
            if not task.done():  # the wait timed out, or the request itself was cancelled
                self._detached.add(task)
                task.add_done_callback(self._detached_done)

    def _detached_done(self, task: asyncio.Task[bool]) -> None:
        self._detached.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # the marker stays: the republisher flushes the contact again
            log.warning(
                "background flush failed; left to the republisher",
                extra={"error": type(exc).__name__},
            )

    async def flush_new(self, docs: Sequence[Doc], marker: str) -> None:
        """Publish freshly imported contacts (their ledger entries are in already), pipelined.

        The snapshots are the documents as built, before the insert: a STOP or an erase that
        reached a contact between its insert and now went out first and would be followed by
        this older version. So the contacts are read again once the batch is out, and any no
        longer at version 1 is flushed the usual way (the latest state, or the tombstone);
        one that is gone was erased, and its tombstone goes out again.
        """
        raw = self.producer.raw
        topic = self.producer.topic_name(Topics.CONTACTS_PREFERENCES)
        futures = []
        for doc in docs:
            snap = snapshot(doc)
            headers, value = encode(
                CONTACT_PREFERENCES,
                snap,
                source=self.producer.source,
                event_id=f"{snap.customer_id}:{snap.version}",
                subject=snap.customer_id,
            )
            futures.append(
                await raw.send(topic, value, key=snap.customer_id.encode(), headers=headers)
            )
        await asyncio.gather(*futures)
        ids = [doc["_id"] for doc in docs]
        stored = await self.repo.versions(ids)
        ok = True
        for customer_id in ids:
            now = stored.get(customer_id)
            if now is None:
                await self.producer.tombstone(Topics.CONTACTS_PREFERENCES, customer_id)
            elif now["version"] != 1 or now.get("erased"):
                ok = await self.flush(customer_id) and ok
        if ok:  # otherwise the marker stays and the republisher flushes the batch again
            await self.repo.done(marker, 0)

    async def republish_once(self, *, grace: timedelta = timedelta(seconds=2)) -> int:
        """Flush what markers older than `grace` name; how many markers were cleared."""
        done = 0
        for marker in await self.repo.due(older_than=utc_now() - grace):
            if "batch" in marker:
                ok = await self._finish_import(marker)
            else:
                ok = True
                for customer_id in marker.get("customers") or [marker["_id"]]:
                    ok = await self.flush(customer_id) and ok
            if ok:
                await self.repo.done(marker["_id"], marker["n"])
                done += 1
        return done

    async def _finish_import(self, marker: Doc) -> bool:
        """Finish an import batch a crash interrupted (see ContactRepository.create_imported):
        publish the contacts it created, remove its entries of rows it did not create."""
        batch = marker["batch"]
        ok = True
        for customer_id, count in zip(marker["customers"], marker["entries"], strict=True):
            doc = await self.repo.get(customer_id)
            ids = [entry_id(customer_id, 1, n, batch) for n in range(count)]
            if doc is not None and all(i in doc.get("ledger_ids", ()) for i in ids):
                ok = await self.flush(customer_id) and ok
            else:
                await self.repo.drop_ledger(ids)
        return ok

    def start(self, *, interval: float) -> None:
        """Run the republisher in the background. A failed run, whatever the error, is logged
        and counted (`herald_background_runs_total`, HeraldBackgroundTaskFailing) and the next
        one retries: a republisher that stopped would leave a STOP unpublished."""
        self._republisher = Every(self.republish_once, interval, name="preferences-republisher")
        self._republisher.start()

    async def stop(self) -> None:
        """Stop the republisher; give the flushes still running in the background up to `wait`
        to end (the producer is still up), then cancel them (their markers stay)."""
        republisher, self._republisher = self._republisher, None
        if republisher is not None:
            await republisher.stop()
        if self._detached:
            await asyncio.wait(set(self._detached), timeout=self.wait)
        for task in list(self._detached):
            await cancel_and_wait(task)
