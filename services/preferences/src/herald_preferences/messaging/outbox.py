"""The outbox: ledger entries and snapshots leave a contact document after it is written.

Every write marks the contact `dirty` in the same single-document update that changes it. The
writer then flushes it at once (copy queued ledger entries, publish the full snapshot or the
erase tombstone, mark published if the version did not move). If Kafka hiccups after the
database write, the contact stays dirty and the republisher loop flushes it later: a snapshot
is never lost, and a re-publish of the same version is harmless on a compacted topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

from aiokafka.errors import KafkaError
from pymongo.errors import PyMongoError

from herald_contracts import CONTACT_PREFERENCES, Topics, utc_now
from herald_kit import Doc, EventProducer, encode
from herald_preferences.adapters.repository import ContactRepository
from herald_preferences.domain.service import snapshot

log = logging.getLogger("herald.preferences.outbox")


class Outbox:
    """Flush contacts to the ledger and to contacts.preferences.v1."""

    def __init__(self, repo: ContactRepository, producer: EventProducer) -> None:
        self.repo = repo
        self.producer = producer
        self._task: asyncio.Task[None] | None = None

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

    async def flush(self, customer_id: str, *, rounds: int = 5) -> bool:
        """Copy queued ledger entries and publish the latest state; True when nothing is left.

        Loops when another writer moved the version meanwhile, so the last thing published for
        a key is never older than what is stored.
        """
        for _ in range(rounds):
            doc = await self.repo.get(customer_id)
            if doc is None or not doc.get("dirty"):
                return True
            await self.repo.copy_to_ledger(doc.get("pending", []))
            await self._publish(doc)
            if doc.get("erased"):
                await self.repo.delete_erased(customer_id, doc["version"])
                return True
            if await self.repo.mark_published(customer_id, doc["version"]):
                return True
        return False

    async def try_flush(self, customer_id: str) -> None:
        """flush, but a broker or database hiccup only leaves the contact for the republisher."""
        try:
            await self.flush(customer_id)
        except (KafkaError, PyMongoError, OSError) as exc:
            log.warning("flush deferred to the republisher", extra={"error": type(exc).__name__})

    async def flush_new(self, docs: Sequence[Doc]) -> None:
        """Flush freshly inserted contacts (version 1) in bulk: one ledger insert, pipelined
        publishes, one update."""
        if not docs:
            return
        await self.repo.copy_to_ledger([e for d in docs for e in d.get("pending", [])])
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
        await self.repo.mark_many_published([d["_id"] for d in docs], 1)

    async def republish_once(self, *, grace: timedelta = timedelta(seconds=2)) -> int:
        """Flush contacts left dirty for longer than `grace`; how many were flushed."""
        done = 0
        for customer_id in await self.repo.dirty(older_than=utc_now() - grace):
            if await self.flush(customer_id):
                done += 1
        return done

    def start(self, *, interval: float) -> None:
        """Run the republisher in the background."""
        self._task = asyncio.create_task(self._loop(interval), name="preferences:republisher")

    async def stop(self) -> None:
        """Stop the republisher."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.republish_once()
            except (KafkaError, PyMongoError, OSError) as exc:
                log.warning("republish failed, will retry", extra={"error": type(exc).__name__})
