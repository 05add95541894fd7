"""The repeated-content rule: what counts as the same message, and when it may go out again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from herald_contracts import (
    SCHEDULED_FIRE,
    CampaignRef,
    ContactRequest,
    OutboundEmail,
    OutboundSms,
    OutboundVoice,
)
from herald_dispatcher.adapters.store import LastContent
from herald_dispatcher.config import Settings
from herald_dispatcher.policy import Dispatcher, content_digest

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
COMMON: dict[str, Any] = {
    "request_id": "r",
    "campaign_id": "c",
    "customer_id": "cust",
    "case_id": "case",
    "created_at": NOW,
    "to": "+447700900123",
}


def _sms(body: str, mid: str = "m1") -> OutboundSms:
    return OutboundSms(**COMMON, message_id=mid, body=body, segments=1, encoding="GSM-7")


def _email(subject: str, text: str, html: str | None = None) -> OutboundEmail:
    common = {**COMMON, "to": "someone@example.com"}
    return OutboundEmail(**common, message_id="m1", subject=subject, text=text, html=html)


def test_the_digest_is_of_what_the_customer_reads_not_of_ids_or_addresses() -> None:
    same = _sms("Your engineer arrives at 14:00.")
    other_ids = same.model_copy(update={"message_id": "m2", "request_id": "r2", "to": "+4477"})
    assert content_digest(same) == content_digest(other_ids)
    assert content_digest(same) != content_digest(_sms("Your engineer arrives at 15:00."))
    # Every part of an email counts: the subject, the text and the HTML.
    email = _email("Case 7", "Booked.", "<p>Booked</p>")
    assert content_digest(email) == content_digest(_email("Case 7", "Booked.", "<p>Booked</p>"))
    assert content_digest(email) != content_digest(_email("Case 8", "Booked.", "<p>Booked</p>"))
    assert content_digest(email) != content_digest(_email("Case 7", "Booked.", "<p>Booked!</p>"))
    assert content_digest(email) != content_digest(_email("Case 7", "Booked."))
    # A call in the same words in another language is another call.
    say = {**COMMON, "message_id": "m1", "say": "Bonjour"}
    assert content_digest(OutboundVoice(**say, language="fr-FR")) != content_digest(
        OutboundVoice(**say, language="fr-CA")
    )


def test_a_signed_link_reads_the_same_whenever_it_was_signed() -> None:
    # Tokens carry the time they were signed, so the same message signed a second later
    # differs byte for byte; the customer reads the same link.
    early = "https://status.example/s/eyJjYXNlIjoiNyJ9.aB1c.sig-one?lang=en&x=1"
    late = "https://status.example/s/eyJjYXNlIjoiNyJ9.aB1d.sig-two?lang=en&x=1"

    def message(url: str) -> OutboundEmail:
        escaped = url.replace("&", "&amp;")
        return _email("Case 7", f"Track it: {url}", f'<a href="{escaped}">Track it</a>')

    assert content_digest(message(early), {"status": early}) == content_digest(
        message(late), {"status": late}
    )
    # Without knowing the link, the two are different bytes.
    assert content_digest(message(early)) != content_digest(message(late))
    # A link to another page is another message.
    prefs = "https://prefs.example/p/eyJjIjoiY3VzdCJ9.aB1c.sig"
    assert content_digest(message(early), {"status": early}) != content_digest(
        message(prefs), {"preferences": prefs}
    )


def _request(campaign: str = "camp", trigger_key: str = "case:3") -> ContactRequest:
    ref = CampaignRef(id=campaign, version=1, name="n", topic="service-updates", messages={})
    return ContactRequest(
        request_id="r2",
        campaign=ref,
        customer_id="cust",
        trigger_key=trigger_key,
        requested_at=NOW,
    )


def _repeats(
    last: LastContent,
    digest: str,
    *,
    mid: str = "m2",
    request: ContactRequest | None = None,
    **settings: Any,
) -> str | None:
    dispatcher = Dispatcher(None, None, None, None, Settings(**settings))  # type: ignore[arg-type]
    return dispatcher._repeats(last, digest, mid, NOW, request or _request())


@pytest.mark.parametrize(
    "ago,digest,last_mid,window,repeats",
    [
        (timedelta(minutes=5), "d", "m1", 86_400, True),  # same words, a new message
        (timedelta(hours=23, minutes=59), "d", "m1", 86_400, True),
        (timedelta(hours=24), "d", "m1", 86_400, False),  # the window has passed
        (timedelta(minutes=5), "other", "m1", 86_400, False),  # other words
        (timedelta(minutes=5), "d", "m2", 86_400, False),  # this message decided again
        (timedelta(minutes=5), "d", "m1", 0, False),  # the rule is off
        (timedelta(minutes=5), "d", "m1", 60, False),
    ],
)
def test_a_repeat_is_the_last_words_again_within_the_window_in_a_new_message(
    ago: timedelta, digest: str, last_mid: str, window: float, repeats: bool
) -> None:
    last = LastContent("k", digest=digest, message_id=last_mid, at=NOW - ago)
    why = _repeats(last, "d", repeat_window_seconds=window)
    assert (why is not None) is repeats
    if why is not None:
        assert why.endswith(f"{ago.total_seconds():.0f} s ago")


def test_nothing_sent_yet_is_never_a_repeat() -> None:
    assert _repeats(LastContent("k", digest=None, message_id=None, at=None), "d") is None


def test_a_campaigns_next_scheduled_fire_is_no_repeat_but_another_campaign_is() -> None:
    """A daily reminder whose fire reaches the customer a few seconds sooner than yesterday's
    is the repetition the business scheduled, not the same words sent twice."""
    yesterday = SCHEDULED_FIRE + "2026-11-23T10:00:00Z"
    today = _request("daily", SCHEDULED_FIRE + "2026-11-24T10:00:00Z")
    last = LastContent(
        "k", "d", "m1", NOW - timedelta(hours=23, minutes=59, seconds=57), "daily", yesterday
    )
    assert _repeats(last, "d", request=today) is None
    # The same fire decided for another message of it, another campaign on the same words, or
    # an event-triggered campaign saying nothing new: repeats, as before.
    assert _repeats(last, "d", request=_request("daily", yesterday)) is not None
    assert _repeats(last, "d", request=_request("other", today.trigger_key)) is not None
    assert _repeats(last, "d", request=_request("daily", "case:4")) is not None
