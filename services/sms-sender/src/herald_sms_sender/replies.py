"""Inbound SMS: what it means, what it answers, and who must hear about it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from herald_contracts import ENGAGEMENT_REPLY, EngagementReply, Intent, utc_now
from herald_kit import EventProducer, continued
from herald_kit.templates import best_locale
from herald_sms_sender.adapters.ledger import Ledger
from herald_sms_sender.domain.keywords import interpret, number_key

log = logging.getLogger("herald.sms.replies")


class Replies:
    """Turn a customer's SMS into opt-out state and an engagement.replies.v1 event."""

    def __init__(
        self,
        ledger: Ledger,
        producer: EventProducer,
        *,
        keywords: Mapping[str, Intent],
        help_answer: str,
        help_answers: Mapping[str, str] | None = None,
    ) -> None:
        """`help_answer`: the HELP answer in English, and for any locale `help_answers` (by
        BCP 47 tag) has none close."""
        self.ledger = ledger
        self.producer = producer
        self.keywords = keywords
        self.help_answer = help_answer
        self.help_answers = {"en": help_answer, **(help_answers or {})}

    def help_for(self, locale: str | None) -> str:
        """The HELP answer for a customer last written to in `locale`: the closest by language,
        script and region (zh-TW reads zh-Hant), else English."""
        return self.help_answers[best_locale(self.help_answers, locale or "en")]

    async def handle(self, *, sid: str, from_: str, body: str) -> str | None:
        """Apply and publish one inbound SMS; the text to answer with, if any."""
        intent = interpret(body, self.keywords)
        key = number_key(from_)
        now = utc_now()
        # Opt-out state is ours too, so the very next send is refused even before the
        # preferences service has consumed the reply.
        if intent == "stop":
            await self.ledger.opt_out(key, at=now)
        elif intent == "start":
            await self.ledger.opt_in(key)
        row = await self.ledger.last_to(key)
        if row is None:
            log.info("reply from a number we never messaged", extra={"intent": intent})
        else:
            reply = EngagementReply(
                reply_id=f"sms-{sid}",
                customer_id=row["customer_id"],
                channel="sms",
                intent=intent,
                text=body[:2000] or None,
                message_id=row["_id"],
                campaign_id=row.get("campaign_id"),
                case_id=row.get("case_id"),
                at=now,
                callback_number=from_ if intent == "callback" else None,
                callback_until=_aware(row.get("expires_at")) if intent == "callback" else None,
                locale=row.get("locale"),
            )
            # The answer to a message goes on in the trace the message was sent in.
            with continued(row.get("traceparent")):
                await self.producer.publish(
                    ENGAGEMENT_REPLY,
                    reply,
                    key=reply.customer_id,
                    event_id=reply.reply_id,  # Twilio's retries of a webhook publish the same id
                    subject=reply.case_id,
                )
        if intent != "help":
            return None
        # Answered in the language the number was last written to; English for a number we
        # never messaged.
        return self.help_for(row.get("locale") if row is not None else None)


def _aware(value: datetime | None) -> datetime | None:
    """A stored time as UTC-aware (a client without tz_aware returns naive UTC)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
