"""The preference centre's form: what the customer may change, turned into a contact."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from herald_contracts import CHANNELS
from herald_kit import InvalidInput
from herald_preferences.domain.ledger import ALL_TOPICS, Change


def contact_from_form(
    current: Mapping[str, Any],
    form: Mapping[str, Sequence[str]],
    *,
    topics: Sequence[str],
    stopped: Sequence[str],
) -> tuple[dict[str, Any], list[Change]]:
    """(the contact in API input shape, extra channel-wide changes) after the customer's form.

    Fields: rank-1..rank-3 (a channel or empty), quiet-start/quiet-end (HH:MM or both empty),
    consent:<topic>:<channel> checkboxes (present = opted in). Opting in to a topic on a
    channel the customer had STOPped lifts the STOP: the customer asked for it themselves.

    On a STOPped channel the page shows every box unticked (nothing is sent there), so an
    unticked box says nothing about the topic: only ticked boxes are recorded, and the grants
    kept from before the STOP stay for a later START to restore.
    """

    def one(name: str) -> str:
        values = form.get(name) or [""]
        return values[0].strip()

    available = [c for c in CHANNELS if c in current.get("channels", {})]
    ranking: list[str] = []
    for i in range(1, len(CHANNELS) + 1):
        choice = one(f"rank-{i}")
        if not choice:
            continue
        if choice not in available:
            raise InvalidInput(f"unknown channel {choice!r}", field=f"rank-{i}")
        if choice in ranking:
            raise InvalidInput("a channel appears twice in the ranking", field=f"rank-{i}")
        ranking.append(choice)
    start, end = one("quiet-start"), one("quiet-end")
    quiet: dict[str, str] | None = None
    if start or end:
        if not (start and end):
            raise InvalidInput("give both the start and the end of quiet hours", field="quiet-end")
        quiet = {"start": start, "end": end}
    consents: dict[str, dict[str, bool]] = {}
    lifted: list[Change] = []
    for topic in topics:
        for channel in available:
            on = bool(form.get(f"consent:{topic}:{channel}"))
            if channel in stopped and not on:
                continue
            consents.setdefault(topic, {})[channel] = on
            if on and channel in stopped and Change(ALL_TOPICS, channel, True) not in lifted:
                lifted.append(Change(ALL_TOPICS, channel, True))
    contact = {
        "customer_id": current["_id"],
        "channels": {k: v["address"] for k, v in current.get("channels", {}).items()},
        "ranking": ranking,
        "consents": consents,
        "locale": current.get("locale", "en"),
        "time_zone": current.get("time_zone", "UTC"),
        "quiet_hours": quiet,
    }
    return contact, lifted
