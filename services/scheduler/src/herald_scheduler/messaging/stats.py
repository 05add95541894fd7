"""Stats consumer (group scheduler-stats): delivery.status.v1 and engagement.replies.v1."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from herald_contracts import DeliveryStatus, EngagementReply, Topics
from herald_kit import decode
from herald_scheduler.adapters.stats import StatsRepository


class StatsConsumer:
    """Counts each message status and each attributable reply once."""

    def __init__(self, stats: StatsRepository, namespace: str) -> None:
        self.stats = stats
        self.status_topic = Topics.DELIVERY_STATUS.name(namespace)

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Route by topic."""
        if record.topic == self.status_topic:
            st = decode(record, DeliveryStatus).data
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
