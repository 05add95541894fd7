"""Turn API input into a stored contact and consent ledger entries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from herald_contracts import ChannelAddress, ContactPreferences
from herald_kit import InvalidInput
from herald_preferences.domain.contacts import ContactIn, normalise_email, normalise_phone


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


def consent_changes(
    before: dict[str, dict[str, bool]], after: dict[str, dict[str, bool]]
) -> list[tuple[str, str, bool]]:
    """(topic, channel, granted) for every consent that differs between two states."""
    changes = []
    for topic in sorted(set(before) | set(after)):
        old, new = before.get(topic, {}), after.get(topic, {})
        for channel in sorted(set(old) | set(new)):
            if channel in new and old.get(channel) != new[channel]:
                changes.append((topic, channel, new[channel]))
    return changes


def snapshot(doc: dict[str, Any]) -> ContactPreferences:
    """The published form of a stored contact."""
    return ContactPreferences(
        customer_id=doc["_id"],
        version=doc["version"],
        channels=doc.get("channels", {}),
        ranking=doc.get("ranking", []),
        consents=doc.get("consents", {}),
        locale=doc.get("locale", "en"),
        time_zone=doc.get("time_zone", "UTC"),
        quiet_hours=doc.get("quiet_hours"),
        updated_at=doc["updated_at"],
    )


def to_document(contact: ContactIn, *, region: str, version: int, now: datetime) -> dict[str, Any]:
    """The stored form of a contact (customer id as _id)."""
    channels = normalised_channels(contact, region=region)
    return {
        "_id": contact.customer_id,
        "channels": {k: v.model_dump() for k, v in channels.items()},
        "ranking": list(contact.ranking),
        "consents": {t: dict(c) for t, c in contact.consents.items()},
        "locale": contact.locale,
        "time_zone": contact.time_zone,
        "quiet_hours": contact.quiet_hours.model_dump() if contact.quiet_hours else None,
        "version": version,
        "updated_at": now,
    }
