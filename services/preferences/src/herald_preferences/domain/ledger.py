"""The consent ledger and how current consent is derived from it.

The ledger is the source of truth: a contact's current consent is the fold of its entries in
order. The snapshot's `consents` is only a cache of that fold, written with the same
single-document update that queues the entries (see adapters/repository.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

Source = Literal[
    "api",
    "sms-keyword",
    "voice-keypad",
    "email-unsubscribe",
    "preference-centre",
    "import",
    "system",
]
SOURCES: tuple[str, ...] = get_args(Source)

# A ledger entry for every topic of one channel at once (STOP / START keywords).
ALL_TOPICS = "*"

# Sources through which the customer speaks for themselves. A withdrawal from one of them is only
# undone by the customer: an API write or an import restating older data must not re-grant it.
CUSTOMER_SOURCES = frozenset(
    {"sms-keyword", "voice-keypad", "email-unsubscribe", "preference-centre"}
)
# Sources of the business's systems, which may restate stale consent.
SYSTEM_WRITERS = frozenset({"api", "import"})


@dataclass(frozen=True, slots=True)
class Change:
    """One consent change before it is written: (topic or '*', channel, granted)."""

    topic: str
    channel: str
    granted: bool


@dataclass
class Consent:
    """Consent as folded from the ledger.

    `granted` is what the customer agreed to per topic and channel; `stopped` are channels the
    customer withdrew wholesale (STOP). Effective consent is granted and not stopped, so a START
    restores exactly what was granted before the STOP.
    """

    granted: dict[str, dict[str, bool]] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)

    def effective(self) -> dict[str, dict[str, bool]]:
        """Current consent per topic and channel, as the dispatcher must apply it."""
        return {
            topic: {ch: ok and ch not in self.stopped for ch, ok in sorted(chans.items())}
            for topic, chans in sorted(self.granted.items())
        }

    def apply(self, change: Change) -> None:
        """Fold one entry."""
        if change.topic == ALL_TOPICS:
            if change.granted:
                self.stopped.discard(change.channel)
            else:
                self.stopped.add(change.channel)
            return
        self.granted.setdefault(change.topic, {})[change.channel] = change.granted


def entry_order(entry: Mapping[str, Any]) -> tuple[int, int]:
    """Ledger order: the contact version that wrote the entry, then its place in that write."""
    return int(entry["version"]), int(entry["n"])


def fold(entries: Iterable[Mapping[str, Any]]) -> Consent:
    """Current consent from ledger entries (any order in, applied in ledger order)."""
    consent = Consent()
    for entry in sorted(entries, key=entry_order):
        consent.apply(Change(str(entry["topic"]), str(entry["channel"]), bool(entry["granted"])))
    return consent


def withdrawn_by_customer(entries: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per topic, the channels whose last entry is the customer's own withdrawal (a one-click
    unsubscribe, a keyword naming the topic, unticking it in the preference centre)."""
    last: dict[tuple[str, str], Mapping[str, Any]] = {}
    for entry in sorted(entries, key=entry_order):
        if entry["topic"] != ALL_TOPICS:
            last[(str(entry["topic"]), str(entry["channel"]))] = entry
    out: dict[str, list[str]] = {}
    for (topic, channel), entry in sorted(last.items()):
        if not entry["granted"] and entry.get("source") in CUSTOMER_SOURCES:
            out.setdefault(topic, []).append(channel)
    return out


def diff(before: Consent, desired: Mapping[str, Mapping[Any, bool]]) -> list[Change]:
    """Changes that take `before.granted` to `desired` for every topic/channel desired names.

    Consents not named are left as they are: a caller cannot silently erase evidence.
    """
    changes = []
    for topic in sorted(desired):
        old = before.granted.get(topic, {})
        for channel in sorted(desired[topic]):
            new = bool(desired[topic][channel])
            if old.get(channel) != new:
                changes.append(Change(topic, channel, new))
    return changes


def entry_id(customer_id: str, version: int, n: int, suffix: str | None = None) -> str:
    """The id of the n-th entry a contact's write at `version` made (see entries_for)."""
    return f"{customer_id}:{version}:{n}" + (f":{suffix}" if suffix else "")


def entries_for(
    customer_id: str,
    changes: Iterable[Change],
    *,
    version: int,
    source: str,
    actor: str,
    at: datetime,
    proof: str | None = None,
    id_suffix: str | None = None,
) -> list[dict[str, Any]]:
    """Ledger rows for changes written at `version`; ids are deterministic so a re-flush is a
    no-op. `id_suffix` makes them unique to one writer (an import batch), whose entries are
    copied before the contact exists and must never take the id of another writer's entry."""
    return [
        {
            "_id": entry_id(customer_id, version, n, id_suffix),
            "customer_id": customer_id,
            "version": version,
            "n": n,
            "topic": c.topic,
            "channel": c.channel,
            "granted": c.granted,
            "source": source,
            "actor": actor,
            "at": at,
            "proof": proof,
        }
        for n, c in enumerate(changes)
    ]
