"""Stats consumer (group scheduler-stats): delivery.status.v1 and engagement.replies.v1."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiokafka import ConsumerRecord

from herald_contracts import CALLBACK_MESSAGE, DeliveryStatus, EngagementReply, Topics
from herald_kit import NotFound, decode
from herald_scheduler.adapters.campaigns import CampaignRepository
from herald_scheduler.adapters.history import ContactHistory
from herald_scheduler.adapters.stats import StatsRepository

# Statuses that mean a message went out: the contact counts towards the customer's caps.
SENT = frozenset({"sent", "delivered", "answered"})
# How long a campaign's priority and cap contribution are used without reading the campaign
# again: statuses come by the thousand and carry no campaign version, so each is not worth a
# read, but a version saved with another priority or `counts_towards_cap` applies within this.
CAP_CLASS_SECONDS = 10.0


class StatsConsumer:
    """Counts each message status and each attributable reply once; notes contacts for caps."""

    def __init__(
        self,
        stats: StatsRepository,
        namespace: str,
        *,
        campaigns: CampaignRepository | None = None,
        history: ContactHistory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats
        self.campaigns = campaigns
        self.history = history
        self.status_topic = Topics.DELIVERY_STATUS.name(namespace)
        self._clock = clock
        # Priority and cap contribution per campaign, with when they were read: kept for
        # CAP_CLASS_SECONDS only, as a new version (PUT /campaigns/{id}) may change them.
        self._caps: dict[str, tuple[float, tuple[str, bool]]] = {}

    async def _cap_class(self, campaign_id: str) -> tuple[str, bool] | None:
        """The campaign's priority and whether it counts towards caps, as of its current
        version give or take CAP_CLASS_SECONDS; None for a campaign not found (not kept: it
        may be created or replicated yet, and its contacts must count from then on)."""
        now = self._clock()
        cached = self._caps.get(campaign_id)
        if cached is not None and now - cached[0] < CAP_CLASS_SECONDS:
            return cached[1]
        if self.campaigns is None:
            return None
        try:
            d = (await self.campaigns.get(campaign_id))["definition"]
        except NotFound:
            self._caps.pop(campaign_id, None)
            return None
        if len(self._caps) > 10_000:
            self._caps.clear()
        cap_class = (
            d.get("priority", "service"),
            d.get("limits", {}).get("counts_towards_cap", True),
        )
        self._caps[campaign_id] = (now, cap_class)
        return cap_class

    async def _note_contact(self, st: DeliveryStatus) -> None:
        if self.history is None or st.status not in SENT:
            return
        cap_class = await self._cap_class(st.campaign_id)
        if cap_class is None or not cap_class[1]:
            return
        await self.history.note(
            customer_id=st.customer_id, priority=cap_class[0], request_id=st.request_id, at=st.at
        )

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Route by topic."""
        if record.topic == self.status_topic:
            st = decode(record, DeliveryStatus).data
            if st.status == "suppressed":
                # The dispatcher decided not to contact: counted once per request, by reason.
                await self.stats.suppressed(
                    campaign_id=st.campaign_id,
                    request_id=st.request_id,
                    channel=st.channel,
                    reason=st.reason or "unknown",
                )
                return
            if st.message_id.startswith(CALLBACK_MESSAGE):
                # A call-back the customer asked for: counted for the campaign they answered,
                # apart from its channels; no contact of the campaign's for caps (the
                # dispatcher does not count call-backs either).
                await self.stats.callback(
                    campaign_id=st.campaign_id,
                    message_id=st.message_id,
                    status=st.status,
                    reason=st.error_code or st.reason,
                )
                return
            # Senders always name the channel; a `failed` without one is the dispatcher's, for a
            # contact it failed before choosing a channel: counted by reason only.
            await self._note_contact(st)
            await self.stats.status(
                campaign_id=st.campaign_id,
                message_id=st.message_id,
                channel=st.channel,
                status=st.status,
                reason=st.error_code or st.reason,
            )
            return
        reply = decode(record, EngagementReply).data
        await self.stats.engaged(
            reply_id=reply.reply_id, message_id=reply.message_id, intent=reply.intent
        )
