"""Turn intentions (API input, keywords, bounces, the preference centre) into the next stored
contact: every consent change becomes ledger entries, and current consent is folded from them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from herald_contracts import ChannelAddress, ContactPreferences
from herald_kit import InvalidInput, validate_own
from herald_preferences.domain.contacts import ContactIn, normalise_email, normalise_phone
from herald_preferences.domain.ledger import (
    SYSTEM_WRITERS,
    Change,
    diff,
    entries_for,
    fold,
    withdrawn_by_customer,
)

Doc = dict[str, Any]


def normalised_channels(contact: ContactIn, *, region: str) -> dict[str, ChannelAddress]:
    """Validated, normalised addresses; InvalidInput naming the field otherwise."""
    out: dict[str, ChannelAddress] = {}
    for channel in ("sms", "voice"):
        raw = getattr(contact.channels, channel)
        if raw is not None:
            try:
                out[channel] = ChannelAddress(address=normalise_phone(raw, region))
            except ValueError as exc:
                raise InvalidInput(str(exc), field=f"channels.{channel}") from exc
    if contact.channels.email is not None:
        try:
            out["email"] = ChannelAddress(address=normalise_email(contact.channels.email))
        except ValueError as exc:
            raise InvalidInput(str(exc), field="channels.email") from exc
    return out


def snapshot(doc: Mapping[str, Any]) -> ContactPreferences:
    """The published form of a stored contact (a channel or quiet hours written by a newer
    version may carry fields this one does not know: they are left out)."""
    return validate_own(
        ContactPreferences,
        {
            "customer_id": doc["_id"],
            "version": doc["version"],
            "channels": doc.get("channels", {}),
            "ranking": doc.get("ranking", []),
            "consents": doc.get("consents", {}),
            "locale": doc.get("locale", "en"),
            "time_zone": doc.get("time_zone", "UTC"),
            "quiet_hours": doc.get("quiet_hours"),
            "updated_at": doc["updated_at"],
        },
        kind="contacts",
    )


def as_input(doc: Mapping[str, Any], ledger: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A stored contact in the API's input shape (what PATCH merges onto).

    Consents are folded from the ledger and the entries still queued, not taken from the
    cached `granted`: a PATCH restates them, and a cache that drifted would write its drift
    into the ledger as the API's grant.
    """
    granted = fold([*ledger, *doc.get("pending", [])]).granted
    return {
        "customer_id": doc["_id"],
        "channels": {k: v["address"] for k, v in doc.get("channels", {}).items()},
        "ranking": list(doc.get("ranking", [])),
        "consents": {t: dict(c) for t, c in granted.items()},
        "locale": doc.get("locale", "en"),
        "time_zone": doc.get("time_zone", "UTC"),
        "quiet_hours": doc.get("quiet_hours"),
    }


def _with_consent(
    base: Doc,
    *,
    customer_id: str,
    ledger: Iterable[Mapping[str, Any]],
    changes: list[Change],
    version: int,
    source: str,
    actor: str,
    now: datetime,
    proof: str | None,
    id_suffix: str | None = None,
) -> Doc:
    """base plus the new ledger entries queued in `pending`, and consent folded from the whole
    ledger (stored entries, entries still queued, and the new ones)."""
    new = entries_for(
        customer_id,
        changes,
        version=version,
        source=source,
        actor=actor,
        at=now,
        proof=proof,
        id_suffix=id_suffix,
    )
    ledger = list(ledger)
    copied = {e["_id"] for e in ledger}
    # Entries already copied to the ledger leave the document with this write.
    pending = [e for e in base.get("pending", []) if e["_id"] not in copied] + new
    known = {e["_id"]: e for e in ledger}
    known.update({e["_id"]: e for e in pending})
    consent = fold(known.values())
    out = dict(base)
    out.update(
        {
            "_id": customer_id,
            "version": version,
            "updated_at": now,
            "pending": pending,
            # Every ledger entry of the customer, so the ledger is read by _id (see ledger_of).
            "ledger_ids": sorted(known),
            "granted": consent.granted,
            "stopped": sorted(consent.stopped),
            "consents": consent.effective(),
        }
    )
    return out


def next_contact(
    contact: ContactIn,
    *,
    current: Mapping[str, Any] | None,
    ledger: Iterable[Mapping[str, Any]],
    region: str,
    source: str,
    actor: str,
    now: datetime,
    extra_changes: Iterable[Change] = (),
    proof: str | None = None,
    id_suffix: str | None = None,
) -> Doc:
    """The stored contact after a create/replace/patch/import: addresses normalised (a kept
    address keeps its status), consent changes written to the ledger and folded.

    extra_changes are channel-wide entries the caller adds (the preference centre lifting a
    STOP) in the same write; proof and id_suffix go on the new ledger entries (entries_for).

    An API write or an import does not re-grant a topic on a channel the customer withdrew
    themselves (withdrawn_by_customer): like a STOP, that consent stays off until the customer
    opts in again, whatever older data a CRM restates.
    """
    ledger = list(ledger)
    channels = normalised_channels(contact, region=region)
    old_channels = (current or {}).get("channels", {})
    stored_channels = {}
    for name, addr in channels.items():
        old = old_channels.get(name)
        # A bounce belongs to the address, not the channel: a new address starts valid.
        status = old["status"] if old and old.get("address") == addr.address else "valid"
        stored_channels[name] = {"address": addr.address, "status": status}
    known = list(ledger) + list((current or {}).get("pending", []))
    changes = diff(fold(known), contact.consents)
    if source in SYSTEM_WRITERS:
        kept = withdrawn_by_customer(known)
        changes = [c for c in changes if not (c.granted and c.channel in kept.get(c.topic, ()))]
    changes = [*changes, *extra_changes]
    base: Doc = {
        "channels": stored_channels,
        "ranking": list(contact.ranking),
        "locale": contact.locale,
        "time_zone": contact.time_zone,
        "quiet_hours": contact.quiet_hours.model_dump() if contact.quiet_hours else None,
        "pending": list((current or {}).get("pending", [])),
        "created_at": (current or {}).get("created_at", now),
    }
    return _with_consent(
        base,
        customer_id=contact.customer_id,
        ledger=ledger,
        changes=changes,
        version=(current["version"] + 1) if current else 1,
        source=source,
        actor=actor,
        now=now,
        proof=proof,
        id_suffix=id_suffix,
    )


def with_consent_changes(
    current: Mapping[str, Any],
    changes: list[Change],
    *,
    ledger: Iterable[Mapping[str, Any]],
    source: str,
    actor: str,
    now: datetime,
    proof: str | None = None,
) -> Doc:
    """The stored contact after consent-only changes (keywords, unsubscribe links)."""
    return _with_consent(
        dict(current),
        customer_id=current["_id"],
        ledger=ledger,
        changes=changes,
        version=current["version"] + 1,
        source=source,
        actor=actor,
        now=now,
        proof=proof,
    )


def with_address_status(
    current: Mapping[str, Any], channel: str, status: str, *, now: datetime
) -> Doc | None:
    """The stored contact with one address's status changed; None when nothing changes."""
    channels = {k: dict(v) for k, v in current.get("channels", {}).items()}
    if channel not in channels or channels[channel].get("status") == status:
        return None
    channels[channel]["status"] = status
    out = dict(current)
    out.update({"channels": channels, "version": current["version"] + 1, "updated_at": now})
    return out


def erased(current: Mapping[str, Any], *, now: datetime) -> Doc:
    """What remains of a contact after erasure until its tombstone is published: no PII."""
    return {
        "_id": current["_id"],
        "erased": True,
        "version": current["version"] + 1,
        "updated_at": now,
        "pending": [],
    }
