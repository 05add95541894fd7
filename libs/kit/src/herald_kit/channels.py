"""Channel choice: the customer's ranking, filtered by consent, address and campaign messages.

Shared by the dispatcher (which chooses at send time) and the scheduler's dry run (which
predicts the choice), so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from herald_contracts import Channel, ContactPreferences


class Campaign(Protocol):
    """What channel choice reads of a campaign (a CampaignRef, or a campaign being defined)."""

    @property
    def topic(self) -> str: ...

    @property
    def messages(self) -> Mapping[Any, Any]: ...


@dataclass(frozen=True, slots=True)
class ChannelChoice:
    """The chosen channel, or why none was left."""

    channel: Channel | None
    reason: str

    @property
    def code(self) -> str:
        """Why no channel was left, as one suppression reason: the single rule that excluded
        every untried channel (no-consent, no-valid-address, no-message), else no-channel."""
        if self.reason == "no-ranking":
            return "no-ranking"
        inner = self.reason.removeprefix("no-channel-left(").removesuffix(")")
        kinds = {r.split(":", 1)[1] for r in inner.split(",") if ":" in r} - {"tried"}
        return kinds.pop() if len(kinds) == 1 else "no-channel"


def choose_channel(
    prefs: ContactPreferences, campaign: Campaign, *, exclude: frozenset[str] = frozenset()
) -> ChannelChoice:
    """The first channel in the customer's ranking that every rule allows."""
    if not prefs.ranking:
        return ChannelChoice(None, "no-ranking")
    reasons = []
    for channel in prefs.ranking:
        if channel in exclude:
            reasons.append(f"{channel}:tried")
            continue
        if not prefs.consents.get(campaign.topic, {}).get(channel, False):
            reasons.append(f"{channel}:no-consent")
            continue
        address = prefs.channels.get(channel)
        if address is None or address.status != "valid":
            reasons.append(f"{channel}:no-valid-address")
            continue
        if channel not in campaign.messages:
            reasons.append(f"{channel}:no-message")
            continue
        return ChannelChoice(channel, "ranked")
    return ChannelChoice(None, "no-channel-left(" + ",".join(reasons) + ")")
