"""Stats consumer (group scheduler-stats): delivery.status.v1 and engagement.replies.v1."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from herald_contracts import CALLBACK_MESSAGE, DeliveryStatus, EngagementReply, Topics
from herald_kit import NotFound, decode
from herald_scheduler.adapters.campaigns import CampaignRepository
from herald_scheduler.adapters.history import ContactHistory
from herald_scheduler.adapters.stats import StatsRepository

# Statuses that mean a message went out: the contact counts towards the customer's caps.
SENT = frozenset({"sent", "delivered", "answered"})


class StatsConsumer:
    """Counts each message status and each attributable reply once; notes contacts for caps."""

    def __init__(
        self,
        stats: StatsRepository,
        namespace: str,
        *,
        campaigns: CampaignRepository | None = None,
        history: ContactHistory | None = None,
    ) -> None:
        self.stats = stats
        self.campaigns = campaigns
        self.history = history
        self.status_topic = Topics.DELIVERY_STATUS.name(namespace)
        # Priority and cap contribution per campaign: read once, they rarely change.
        self._caps: dict[str, tuple[str, bool] | None] = {}

    async def _cap_class(self, campaign_id: str) -> tuple[str, bool] | None:
        if campaign_id not in self._caps:
            if len(self._caps) > 10_000:
                self._caps.clear()
            try:
                d = (
                    (await self.campaigns.get(campaign_id))["definition"]
                    if self.campaigns
                    else None
                )
            except NotFound:
                d = None
            self._caps[campaign_id] = (
                (d.get("priority", "service"), d.get("limits", {}).get("counts_towards_cap", True))
                if d
                else None
            )
        return self._caps[campaign_id]

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
