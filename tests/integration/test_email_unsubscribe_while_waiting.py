"""An unsubscribe stops the emails it covers that are still waiting to go out.

Real database and broker. The customer unsubscribes through the one-click link of an email
(the RFC 8058 POST, as a mailbox provider makes it). A second email to the address, which the
dispatcher handed over before it could know, is waiting between its claim and MAIL FROM: in a
retry pause after a 4xx, in a 421's hold, in the pacer's queue, or on an open circuit breaker.
What the address unsubscribed from is read again right before the relay is given the email,
so it is not sent: it fails as opted out, as one refused at its claim does. An unsubscribe from
a topic stops that topic's emails only; one from every email stops them all.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from twilio_support import Collector

from herald_contracts import ENGAGEMENT_REPLY, OutboundEmail, utc_now
from herald_email_sender.adapters.ledger import BatchedLedger
from herald_email_sender.adapters.smtp import Accepted, Pace, RelayRefused
from herald_email_sender.app import create_app
from herald_email_sender.config import Settings
from herald_email_sender.sending import OPTED_OUT, EmailSending
from herald_kit import CircuitBreaker, EventProducer, LinkSigner, Pacer
from support import MeanwhileInThePacer, eventually

SECRET = "unsubscribe-test-secret"
PUBLIC = "https://mail.herald.test"
Meanwhile = Callable[[], Awaitable[None]]


class Relay:
    """Takes every email (after the sender's pacing step), except that the next transaction
    is refused with `refuse` once `before` ran (the unsubscribe arriving meanwhile)."""

    def __init__(self) -> None:
        self.refuse: RelayRefused | None = None
        self.before: Meanwhile | None = None
        self.taken: list[str] = []

    async def send(
        self, *, sender: str, recipient: str, data: bytes, pace: Pace | None = None
    ) -> Accepted:
        if pace is not None:
            await pace()
        refuse, self.refuse = self.refuse, None
        if refuse is not None:
            if self.before is not None:
                await self.before()
            raise refuse
        self.taken.append(recipient)
        return Accepted(provider_id=f"Q{len(self.taken)}")

    async def close(self) -> None:
        pass


def email(to: str, *, topic: str | None = None, customer_id: str = "cust-1") -> OutboundEmail:
    tag = uuid.uuid4().hex[:10]
    return OutboundEmail(
        message_id=f"msg-{tag}",
        request_id=f"req-{tag}",
        campaign_id="camp-1",
        customer_id=customer_id,
        case_id=f"case-{tag}",
        to=to,
        subject="Your engineer is booked",
        text="Your engineer arrives at 14:00.",
        topic=topic,
        created_at=utc_now(),
    )


class Env:
    """An email-sender's sending and its one-click endpoint on one database."""

    def __init__(self, db: Any, prod: EventProducer, **settings: Any) -> None:
        self.db = db
        self.settings = Settings(
            link_secret=SECRET,
            public_base_url=PUBLIC,
            send_backoff_base_seconds=0.01,
            send_backoff_cap_seconds=0.01,
            slow_down_seconds=0.2,
            **settings,
        )
        self.ledger = BatchedLedger(db)
        self.relay = Relay()
        self.prod = prod
        self.app = create_app(self.settings, relay=self.relay)
        self.app.state.ledger = self.ledger
        self.app.state.runtime.producer = prod

    def sending(self, **kw: Any) -> EmailSending:
        return EmailSending(
            ledger=self.ledger,
            relay=self.relay,
            producer=self.prod,
            settings=self.settings,
            signer=LinkSigner(SECRET, "unsubscribe"),
            **kw,
        )

    async def unsubscribe(self, sending: EmailSending, msg: OutboundEmail) -> None:
        """Click one-click unsubscribe in this email."""
        url = sending.unsubscribe_url(msg)
        assert url is not None
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as http:
            r = await http.post(urlsplit(url).path, data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 200, r.text

    async def row(self, msg: OutboundEmail) -> dict[str, Any]:
        row: dict[str, Any] = await self.db["send_ledger"].find_one({"_id": msg.message_id})
        return row


@pytest.fixture
async def env(mongo: Any, db_name: Callable[[str], str], prod: EventProducer) -> Env:
    """An email-sender on the test's database, with the send ledger's indexes."""
    env = Env(mongo[db_name("email_sender")], prod)
    await env.ledger.ensure_indexes()
    return env


@pytest.mark.parametrize("wait", ["retry-pause", "421-hold", "pacer", "breaker-open"])
async def test_an_unsubscribe_that_arrives_while_the_email_waits_stops_it(
    wait: str, env: Env
) -> None:
    to = f"Customer-{uuid.uuid4().hex[:8]}@example.com"
    pacer = MeanwhileInThePacer() if wait == "pacer" else Pacer(0)
    breaker = CircuitBreaker()
    meanwhile: list[Meanwhile] = []

    async def sleep(seconds: float) -> None:
        """A retry pause or a wait on the breaker, during which the customer unsubscribes."""
        while meanwhile:
            await meanwhile.pop()()
        await asyncio.sleep(seconds)

    sending = env.sending(pacer=pacer, breaker=breaker, sleep=sleep)
    first = email(to)
    await sending.send(first)
    assert env.relay.taken == [to]
    second = email(to.lower())  # handed over before the unsubscribe

    async def unsubscribe() -> None:
        await env.unsubscribe(sending, first)

    if wait == "retry-pause":
        env.relay.refuse = RelayRefused(451, "4.3.0 try again later", stage="rcpt")
        meanwhile.append(unsubscribe)
    elif wait == "421-hold":
        env.relay.refuse = RelayRefused(421, "4.7.0 slow down", stage="mail")
        env.relay.before = unsubscribe
    elif wait == "pacer":
        pacer.meanwhile = unsubscribe
    else:
        sending.breaker = CircuitBreaker(threshold=1, cooldown=0.3)
        sending.breaker.failure()  # open: the email waits out the cool-down
        meanwhile.append(unsubscribe)
    await asyncio.wait_for(sending.send(second), timeout=10)

    assert env.relay.taken == [to], "the email went out after the customer unsubscribed"
    row = await env.row(second)
    assert (row["status"], row["error_code"]) == ("failed", OPTED_OUT)
    stored = await env.db["opt_outs"].find_one({})
    assert stored is not None and to.lower() not in str(stored).lower(), "kept only as a hash"


async def test_an_unsubscribe_from_a_topic_stops_that_topics_emails_only(
    env: Env,
    prod: EventProducer,
    infra: dict[str, str],
    namespace: str,
) -> None:
    to = f"customer-{uuid.uuid4().hex[:8]}@example.com"
    sending = env.sending()
    first = email(to, topic="service-updates")
    await sending.send(first)
    # Handed over before the unsubscribe, claimed after it.
    # `same` for another customer at the address (a shared mailbox), whom the link did not name.
    same, other, untopical, own = (
        email(to, topic="service-updates", customer_id="cust-2"),
        email(to, topic="outages"),
        email(to),
        email(to, topic="service-updates"),
    )
    await env.unsubscribe(sending, first)

    async with Collector(infra["kafka"], namespace, ENGAGEMENT_REPLY) as replies:
        for msg in (own, same, other, untopical):
            await sending.send(msg)
        assert (await env.row(own))["error_code"] == OPTED_OUT
        # Preferences hears of it for that customer too, for the topic it covered; no message
        # is named, so the contact's escalation to the next channel goes on.
        [told] = await eventually(lambda: replies.where(customer_id="cust-2"))
        await asyncio.sleep(0.5)
        # Not told again for the one who clicked: an email handed over before they subscribed
        # again (the preference centre) must not withdraw that.
        assert replies.where(reply_id=f"email-opted-out-{own.message_id}") == []
    assert (told.intent, told.topic, told.message_id) == ("unsubscribe", "service-updates", None)
    assert (await env.row(same))["error_code"] == OPTED_OUT
    assert (await env.row(same))["reason"] == "recipient unsubscribed from service-updates"
    assert env.relay.taken == [to, to, to], "an email the unsubscribe did not cover was stopped"

    # An unsubscribe from every email (a link that named no topic) stops them all.
    everything = email(to)
    await sending.send(everything)
    await env.unsubscribe(sending, everything)
    after = email(to, topic="outages")
    await sending.send(after)
    assert ((await env.row(after))["status"], (await env.row(after))["error_code"]) == (
        "failed",
        OPTED_OUT,
    )
    assert len(env.relay.taken) == 4

    # Past the hold, an email handed over passed a consent check that knew of the unsubscribe:
    # the customer subscribed again (the preference centre), which the sender cannot see.
    later = Env(env.db, prod, opt_out_hold_seconds=0)
    later.relay = env.relay
    resubscribed = email(to, topic="outages")
    await later.sending().send(resubscribed)
    assert (await env.row(resubscribed)).get("error_code") is None
    assert len(env.relay.taken) == 5


async def test_a_later_unsubscribe_at_a_shared_address_is_told_for_one_who_unsubscribed_before(
    env: Env,
    infra: dict[str, str],
    namespace: str,
) -> None:
    to = f"family-{uuid.uuid4().hex[:8]}@example.com"
    sending = env.sending()
    a_old, b_old = email(to, topic="billing", customer_id="cust-a"), email(to, customer_id="cust-b")
    await sending.send(a_old)
    await sending.send(b_old)
    # Weeks ago A unsubscribed from 'billing' (preferences heard it for A then); A has
    # subscribed again since.
    weeks_ago = utc_now() - timedelta(days=20)
    assert await env.ledger.unsubscribe(
        a_old.message_id, customer_id="cust-a", topic="billing", at=weeks_ago
    )
    # Handed over just before B, who shares the mailbox, unsubscribes from every email.
    a_new = email(to, topic="outages", customer_id="cust-a")
    await env.unsubscribe(sending, b_old)

    async with Collector(infra["kafka"], namespace, ENGAGEMENT_REPLY) as replies:
        await sending.send(a_new)
        assert (await env.row(a_new))["error_code"] == OPTED_OUT
        # Preferences hears of today's unsubscribe for A too, or A's email consent stays.
        [told] = await eventually(lambda: replies.where(customer_id="cust-a"))
    assert (told.intent, told.topic) == ("unsubscribe", None)
    # The older unsubscribe still counts for its topic.
    stored = await env.db["opt_outs"].find_one({})
    assert stored is not None and "billing" in stored["topics"]
