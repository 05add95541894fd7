"""Whole decisions through `Dispatcher.handle`, on in-memory stores: when a message may still go
out, deferrals that come back early, the zones of a phone number."""

from __future__ import annotations

import asyncio
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher_fakes import rig
from herald_contracts import (
    CampaignRef,
    CaseState,
    ChannelAddress,
    ContactPreferences,
    ContactRequest,
    DeliveryStatus,
    MessageTemplate,
    OutboundEmail,
    OutboundSms,
    OutboundVoice,
    QuietHours,
    TimerRequest,
)
from herald_dispatcher.policy import derived_id
from herald_kit import LinkSigner
from herald_kit.windows import ContactWindow, Window

T = MessageTemplate(body="Your engineer arrives at 14:00.")
LONDON_MOBILE = "+447700900123"
NEW_YORK = "+12125550123"


def _prefs(**overrides: Any) -> ContactPreferences:
    fields: dict[str, Any] = {
        "customer_id": "c1",
        "version": 1,
        "channels": {
            "sms": ChannelAddress(address=LONDON_MOBILE),
            "voice": ChannelAddress(address=LONDON_MOBILE),
            "email": ChannelAddress(address="someone@example.com"),
        },
        "ranking": ["sms"],
        "consents": {"service-updates": {"sms": True, "voice": True, "email": True}},
        "time_zone": "Europe/London",
        "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    return ContactPreferences(**{**fields, **overrides})


def _request(now: datetime, **overrides: Any) -> ContactRequest:
    campaign = CampaignRef(
        id="c",
        version=1,
        name="n",
        topic="service-updates",
        max_attempts=overrides.pop("max_attempts", 1),
        messages={"sms": {"en": T}, "voice": {"en": T}, "email": {"en": T}},
    )
    fields: dict[str, Any] = {
        "request_id": "r1",
        "campaign": campaign,
        "customer_id": "c1",
        "trigger_key": "k",
        "requested_at": now,
    }
    return ContactRequest(**{**fields, **overrides})


def _escalated_now(r: Any) -> ContactRequest:
    """The next attempt a failure status asked for: the attempt's escalation timer, due now."""
    (timer,) = [t for t in r.producer.of(TimerRequest) if t.due_at == r.clock.now]
    assert timer.reason == "escalation" and timer.request is not None
    return cast(ContactRequest, timer.request)


# -- a message carries the moment its window closes ------------------------------------------


def test_an_sms_sent_just_before_the_legal_window_closes_must_go_out_before_it_closes() -> None:
    now = datetime(2026, 1, 12, 20, 59, 30, tzinfo=UTC)  # 20:59:30 in London, hours 08-21
    r = rig(_prefs(), now)
    decision = asyncio.run(r.dispatcher.handle(_request(now)))
    assert decision.outcome == "sent"
    (sms,) = r.producer.of(OutboundSms)
    # The sender fails it as expired after 21:00 rather than text the customer at night.
    assert sms.send_by == datetime(2026, 1, 12, 21, tzinfo=UTC)
    assert sms.deadline == sms.send_by
    assert sms.expires_at is None  # the request's expiry, for a call-back, is untouched


def test_the_send_by_is_the_earlier_of_the_requests_expiry_and_the_quiet_hours() -> None:
    now = datetime(2026, 7, 1, 12, tzinfo=UTC)  # 13:00 in London (summer time)
    prefs = _prefs(ranking=["email"], quiet_hours=QuietHours(start="22:00", end="07:00"))
    r = rig(prefs, now)
    asyncio.run(r.dispatcher.handle(_request(now)))
    (email,) = r.producer.of(OutboundEmail)
    assert email.send_by == datetime(2026, 7, 1, 21, tzinfo=UTC)  # 22:00 in London
    assert email.topic == "service-updates"  # what its one-click unsubscribe leaves
    soon = now + timedelta(hours=2)
    r = rig(prefs, now)
    asyncio.run(r.dispatcher.handle(_request(now, expires_at=soon)))
    (email,) = r.producer.of(OutboundEmail)
    assert (email.expires_at, email.deadline) == (soon, soon)


def test_an_email_without_quiet_hours_has_no_send_by() -> None:
    now = datetime(2026, 1, 12, 3, tzinfo=UTC)
    r = rig(_prefs(ranking=["email"]), now)
    asyncio.run(r.dispatcher.handle(_request(now)))
    (email,) = r.producer.of(OutboundEmail)
    assert email.send_by is None and email.deadline is None


def test_a_message_that_expired_at_the_sender_escalates_to_the_next_channel() -> None:
    now = datetime(2026, 1, 12, 20, 59, 30, tzinfo=UTC)
    r = rig(_prefs(ranking=["sms", "email"]), now)
    asyncio.run(r.dispatcher.handle(_request(now, max_attempts=2)))
    (sms,) = r.producer.of(OutboundSms)
    failed = DeliveryStatus(
        message_id=sms.message_id,
        request_id="r1",
        campaign_id="c",
        customer_id="c1",
        channel="sms",
        status="failed",
        error_code="expired",
        at=now + timedelta(minutes=1),
    )
    r.clock.now = failed.at
    asyncio.run(r.dispatcher.on_status(failed))
    nxt = _escalated_now(r)
    assert (nxt.attempt, nxt.tried_channels) == (2, ["sms"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tz=st.sampled_from(["Europe/London", "America/New_York", "Australia/Lord_Howe", "UTC"]),
    extra=st.lists(st.sampled_from(["America/Los_Angeles", "Asia/Kolkata", "Pacific/Chatham"])),
    quiet=st.none() | st.tuples(st.integers(0, 95), st.integers(0, 95)),
    now=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
)
def test_the_window_closes_at_the_first_minute_that_is_not_allowed(
    tz: str, extra: list[str], quiet: tuple[int, int] | None, now: datetime
) -> None:
    window = ContactWindow(
        tz=zoneinfo.ZoneInfo(tz),
        allowed=Window(8 * 60, 21 * 60),
        quiet=Window(quiet[0] * 15, quiet[1] * 15) if quiet else None,
        also=tuple(zoneinfo.ZoneInfo(z) for z in extra),
    )
    try:
        now = window.next_allowed(now)
    except ValueError:
        return
    closes = window.closes_after(now)
    assert closes is not None and closes > now
    assert not window.permits(closes)
    # Every minute before it is allowed.
    at = now
    while at < closes:
        assert window.permits(at), at
        at += timedelta(minutes=1)


# -- a deferral's timer that arrives early ----------------------------------------------------


def test_a_deferral_that_comes_back_a_little_early_is_sent_not_dropped() -> None:
    prefs = _prefs(quiet_hours=QuietHours(start="22:00", end="09:00"))
    night = datetime(2026, 1, 10, 23, tzinfo=UTC)
    r = rig(prefs, night)

    async def run() -> list[str]:
        outcomes = []
        first = await r.dispatcher.handle(_request(night))
        outcomes.append(first.outcome)
        (timer,) = r.producer.of(TimerRequest)
        assert timer.request is not None
        # The scheduler's clock is 50 ms ahead of the dispatcher's.
        r.clock.now = timer.due_at - timedelta(milliseconds=50)
        second = await r.dispatcher.handle(timer.request)
        outcomes.append(second.outcome)
        for later in r.producer.of(TimerRequest)[1:]:  # were it deferred again: fire that too
            assert later.request is not None
            assert later.due_at > timer.due_at  # never the same moment: its claim is taken
            r.clock.now = later.due_at
            outcomes.append((await r.dispatcher.handle(later.request)).outcome)
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes == ["deferred", "sent"]
    assert len(r.producer.of(OutboundSms)) == 1


def test_a_deferral_is_always_later_than_the_moment_the_request_was_due() -> None:
    prefs = _prefs(quiet_hours=QuietHours(start="22:00", end="09:00"))
    due = datetime(2026, 1, 11, 9, tzinfo=UTC)
    r = rig(prefs, due)
    # Due at 09:00 but the window says 09:00 too (e.g. a cap that frees at the same minute):
    # the dispatcher's deferral must name a later moment or the claim drops it.
    request = _request(due, not_before=due)
    asyncio.run(r.dispatcher._defer(request, "sms", due, "frequency-cap"))
    (timer,) = r.producer.of(TimerRequest)
    assert timer.request is not None and timer.request.not_before is not None
    assert timer.due_at > due and timer.request.not_before > due


# -- the zones of a phone number ----------------------------------------------------------------


def test_a_us_number_is_not_called_at_night_whatever_the_zone_on_file() -> None:
    now = datetime(2026, 1, 12, 9, 30, tzinfo=UTC)  # 04:30 in New York
    phone = {"voice": ChannelAddress(address=NEW_YORK)}
    for zone in ({}, {"time_zone": "America/New_Yrok"}, {"time_zone": "Europe/London"}):
        r = rig(_prefs(channels=phone, ranking=["voice"], **zone), now)
        decision = asyncio.run(r.dispatcher.handle(_request(now)))
        assert (decision.outcome, decision.rule) == ("deferred", "quiet-hours"), zone
        assert decision.due_at == datetime(2026, 1, 12, 13, tzinfo=UTC), zone  # 08:00 there
        assert not r.producer.of(OutboundVoice)


def test_an_sms_to_a_us_number_must_go_before_the_window_closes_in_any_of_its_zones() -> None:
    now = datetime(2026, 1, 12, 17, tzinfo=UTC)  # 09:00 in Los Angeles, 12:00 in New York
    phone = {"sms": ChannelAddress(address=NEW_YORK)}
    r = rig(_prefs(channels=phone, time_zone="America/Los_Angeles"), now)
    assert asyncio.run(r.dispatcher.handle(_request(now))).outcome == "sent"
    (sms,) = r.producer.of(OutboundSms)
    assert sms.send_by == datetime(2026, 1, 13, 2, tzinfo=UTC)  # 21:00 in New York comes first


def test_a_customer_whose_zone_nobody_gave_is_reached_in_their_numbers_evening() -> None:
    # 19:00 in New York is 00:00 UTC: the default "UTC" on file says nothing about where the
    # customer lives, the number does; only its window (08:00-21:00 there) applies.
    now = datetime(2026, 1, 13, 0, tzinfo=UTC)
    phone = {"sms": ChannelAddress(address=NEW_YORK)}
    r = rig(_prefs(channels=phone, time_zone="UTC"), now)
    assert asyncio.run(r.dispatcher.handle(_request(now))).outcome == "sent"
    (sms,) = r.producer.of(OutboundSms)
    assert sms.send_by == datetime(2026, 1, 13, 2, tzinfo=UTC)  # 21:00 in New York


def test_a_toll_free_number_does_not_locate_its_customer() -> None:
    # A toll-free number names every zone of the North American plan, Guam to Pago Pago, and
    # is answered wherever its owner likes. The customer's own zone decides.
    now = datetime(2026, 1, 12, 15, tzinfo=UTC)  # 10:00 in New York
    phone = {"sms": ChannelAddress(address="+18005550100")}
    r = rig(_prefs(channels=phone, time_zone="America/New_York"), now)
    assert asyncio.run(r.dispatcher.handle(_request(now))).outcome == "sent"


def test_a_toll_free_number_without_a_zone_is_reached_in_its_regions_main_zone() -> None:
    # Nobody said where the customer lives and the number says no place: the region's main
    # zone (New York for the US), not UTC, where 17:30 in New York is 22:30, the night.
    now = datetime(2026, 1, 12, 22, 30, tzinfo=UTC)
    phone = {"sms": ChannelAddress(address="+18005550100")}
    r = rig(_prefs(channels=phone, time_zone="UTC"), now)
    assert asyncio.run(r.dispatcher.handle(_request(now))).outcome == "sent"
    (sms,) = r.producer.of(OutboundSms)
    assert sms.send_by == datetime(2026, 1, 13, 2, tzinfo=UTC)  # 21:00 in New York


def test_an_australian_mobile_without_a_zone_is_not_texted_at_night_anywhere_in_australia() -> None:
    # phonenumbers places every +61 4 number from Sydney (UTC+11 in January) to Cocos (+6:30),
    # four and a half hours apart: contact waits for the hour that is day in all of them
    # (08:00 on Cocos, 12:30 in Sydney), never for UTC's 08:00, 19:00 in Sydney.
    now = datetime(2026, 1, 15, 16, tzinfo=UTC)  # 03:00 in Sydney
    phone = {"sms": ChannelAddress(address="+61412345678")}
    r = rig(_prefs(channels=phone, time_zone="UTC"), now)
    decision = asyncio.run(r.dispatcher.handle(_request(now)))
    assert (decision.outcome, decision.rule) == ("deferred", "quiet-hours")
    assert decision.due_at == datetime(2026, 1, 16, 1, 30, tzinfo=UTC)
    assert not r.producer.of(OutboundSms)


def test_a_russian_mobile_without_a_zone_is_not_texted_at_night_in_moscow() -> None:
    # A +7 9 number may be anywhere from Kaliningrad (UTC+2) to Kamchatka (+12): the three
    # hours a day that are day in all of them, 09:00-12:00 in Moscow.
    now = datetime(2026, 1, 15, 20, 30, tzinfo=UTC)  # 23:30 in Moscow
    phone = {"sms": ChannelAddress(address="+79161234567")}
    r = rig(_prefs(channels=phone, time_zone="UTC"), now)
    decision = asyncio.run(r.dispatcher.handle(_request(now)))
    assert (decision.outcome, decision.rule) == ("deferred", "quiet-hours")
    assert decision.due_at == datetime(2026, 1, 16, 6, tzinfo=UTC)  # 09:00 in Moscow


def test_quiet_hours_no_hour_of_a_numbers_zones_escapes_fall_back_to_its_regions_main_zone() -> (
    None
):
    # 08:00-11:00 allowed in each of a Russian mobile's zones, ten hours apart, never opens
    # in all of them together: the customer is then reached in Moscow's morning.
    now = datetime(2026, 1, 15, 6, tzinfo=UTC)  # 09:00 in Moscow
    phone = {"sms": ChannelAddress(address="+79161234567")}
    prefs = _prefs(
        channels=phone, time_zone="UTC", quiet_hours=QuietHours(start="11:00", end="07:00")
    )
    r = rig(prefs, now)
    assert asyncio.run(r.dispatcher.handle(_request(now))).outcome == "sent"
    (sms,) = r.producer.of(OutboundSms)
    assert sms.send_by == datetime(2026, 1, 15, 8, tzinfo=UTC)  # 11:00 in Moscow


NEW_ZEALAND_MOBILE = "+64211234567"


def test_a_number_whose_zones_share_no_hour_for_weeks_is_texted_in_the_customers_zone() -> None:
    # A London customer with a New Zealand mobile and quiet hours 21:00-09:00: 20:00-21:00 in
    # London is 09:00-10:00 in Auckland in January, but from New Zealand's clock change (27
    # September) to Britain's (25 October) the two are twelve hours apart and no hour is
    # allowed in both. London's own hours decide then, not "never" (the message suppressed).
    now = datetime(2026, 10, 10, 12, tzinfo=UTC)  # 13:00 in London, 01:00 in Auckland
    phone = {"sms": ChannelAddress(address=NEW_ZEALAND_MOBILE)}
    prefs = _prefs(channels=phone, quiet_hours=QuietHours(start="21:00", end="09:00"))
    r = rig(prefs, now)
    assert asyncio.run(r.dispatcher.handle(_request(now))).outcome == "sent"
    (sms,) = r.producer.of(OutboundSms)
    assert sms.send_by == datetime(2026, 10, 10, 20, tzinfo=UTC)  # 21:00 in London


def test_a_number_whose_zones_share_no_hour_for_days_is_not_held_for_them() -> None:
    # 1 April: Britain is on summer time, New Zealand until 5 April: the message waits for
    # London's morning that day, not for the hour both share again on the 5th.
    now = datetime(2026, 4, 1, 6, tzinfo=UTC)  # 07:00 in London
    phone = {"sms": ChannelAddress(address=NEW_ZEALAND_MOBILE)}
    prefs = _prefs(channels=phone, quiet_hours=QuietHours(start="21:00", end="09:00"))
    decision = asyncio.run(rig(prefs, now).dispatcher.handle(_request(now)))
    assert (decision.outcome, decision.rule) == ("deferred", "quiet-hours")
    assert decision.due_at == datetime(2026, 4, 1, 8, tzinfo=UTC)  # 09:00 in London
    # In January they share 20:00-21:00 in London every day: the message waits for it.
    now = datetime(2026, 1, 15, 12, tzinfo=UTC)  # noon in London, 01:00 in Auckland
    decision = asyncio.run(rig(prefs, now).dispatcher.handle(_request(now)))
    assert (decision.outcome, decision.rule) == ("deferred", "quiet-hours")
    assert decision.due_at == datetime(2026, 1, 15, 20, tzinfo=UTC)  # 09:00 in Auckland


def test_a_customer_without_a_zone_is_told_times_by_the_clock_the_number_placed_them_in() -> None:
    # The windows placed the customer in New York (the number's zone): the message and the
    # status page it links to tell the engineer's arrival by New York's clock, not by UTC's.
    now = datetime(2026, 5, 1, 14, tzinfo=UTC)  # 10:00 in New York
    case = CaseState(
        case_id="k1",
        version=1,
        customer_ids=["c1"],
        status="booked",
        eta=datetime(2026, 5, 1, 18, tzinfo=UTC),  # 14:00 in New York
        updated_at=now,
    )
    phone = {"sms": ChannelAddress(address=NEW_YORK)}
    r = rig(
        _prefs(channels=phone, time_zone="UTC"),
        now,
        link_secret="s3cret",
        status_url="https://status.example/s/{token}",
    )
    r.views.cases["k1"] = case
    eta = MessageTemplate(body="Arrives at {{ case.eta | time }}: {{ links.status }}")
    request = _request(now, case_id="k1", case_version=1, case_state=case)
    request.campaign.messages["sms"] = {"en": eta}
    assert asyncio.run(r.dispatcher.handle(request)).outcome == "sent"
    (sms,) = r.producer.of(OutboundSms)
    told, link = sms.body.split(": ")
    assert told.replace("\u202f", " ") == "Arrives at 2:00 PM"
    token = link.removeprefix("https://status.example/s/")
    claims = LinkSigner("s3cret", "case-status").verify(token, max_age_seconds=60)
    assert claims["tz"] == "America/New_York"


# -- a channel that fails before anything is sent --------------------------------------------

CHINESE = MessageTemplate(body="您的工程师将于今天下午两点到达。" * 6)  # 2 UCS-2 segments


def _one_segment_campaign(max_attempts: int, sms: MessageTemplate = CHINESE) -> CampaignRef:
    return CampaignRef(
        id="c",
        version=1,
        name="n",
        topic="service-updates",
        sms_segment_limit=1,
        max_attempts=max_attempts,
        messages={"sms": {"en": sms}, "email": {"en": T}},
    )


def test_an_sms_over_the_segment_limit_gives_way_to_the_next_ranked_channel() -> None:
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    r = rig(_prefs(ranking=["sms", "email"]), now)
    request = _request(now, campaign=_one_segment_campaign(max_attempts=3))
    decision = asyncio.run(r.dispatcher.handle(request))
    assert (decision.outcome, decision.channel) == ("sent", "email")
    assert decision.detail is not None and "sms failed: segment-limit" in decision.detail
    (email,) = r.producer.of(OutboundEmail)
    assert email.attempt == 2 and not r.producer.of(OutboundSms)
    (attempt,) = r.ledger.attempts.values()
    assert (attempt["attempt"], attempt["channel"]) == (2, "email")
    # Still the customer's first contact: it counts towards the caps.
    assert [c["r"] for (c,) in r.ledger.contacts.values()] == ["r1"]


def test_an_sms_whose_escape_pair_straddles_a_part_counts_the_part_it_takes() -> None:
    # 306 septets: two parts of 153 by arithmetic, three on the wire (ESC + € stay together).
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    euro = MessageTemplate(body="a" * 152 + "€" + "a" * 152)
    campaign = _one_segment_campaign(max_attempts=1, sms=euro).model_copy(
        update={"sms_segment_limit": 2}
    )
    r = rig(_prefs(), now)
    decision = asyncio.run(r.dispatcher.handle(_request(now, campaign=campaign)))
    assert (decision.outcome, decision.rule) == ("failed", "segment-limit")
    r = rig(_prefs(), now)
    campaign = campaign.model_copy(update={"sms_segment_limit": 3})
    asyncio.run(r.dispatcher.handle(_request(now, campaign=campaign)))
    (sms,) = r.producer.of(OutboundSms)
    assert sms.segments == 3


@pytest.mark.parametrize(
    "body",
    ["a" * 1601, "a" * 1599 + "\N{GRINNING FACE}"],  # an emoji counts two at Twilio
    ids=["1601-characters", "emoji-over-1600"],
)
def test_an_sms_over_1600_characters_gives_way_to_the_next_ranked_channel(body: str) -> None:
    # No segment limit on the campaign: Twilio would refuse the body (21617) after it was
    # planned as sent.
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    campaign = _one_segment_campaign(max_attempts=3, sms=MessageTemplate(body=body))
    campaign = campaign.model_copy(update={"sms_segment_limit": None})
    r = rig(_prefs(ranking=["sms", "email"]), now)
    decision = asyncio.run(r.dispatcher.handle(_request(now, campaign=campaign)))
    assert (decision.outcome, decision.channel) == ("sent", "email")
    assert decision.detail is not None and "sms failed: segment-limit" in decision.detail
    assert not r.producer.of(OutboundSms) and len(r.producer.of(OutboundEmail)) == 1


def test_an_sms_of_1600_characters_goes_out() -> None:
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    campaign = _one_segment_campaign(max_attempts=3, sms=MessageTemplate(body="a" * 1600))
    campaign = campaign.model_copy(update={"sms_segment_limit": None})
    r = rig(_prefs(ranking=["sms", "email"]), now)
    decision = asyncio.run(r.dispatcher.handle(_request(now, campaign=campaign)))
    assert (decision.outcome, decision.channel) == ("sent", "sms")
    (sms,) = r.producer.of(OutboundSms)
    assert len(sms.body) == 1600 and sms.segments == 11


def test_an_email_without_a_subject_takes_the_campaign_name_as_written() -> None:
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    r = rig(_prefs(ranking=["email"]), now)
    campaign = _request(now).campaign.model_copy(update={"name": "Ticket {#1} {{ follow-up"})
    decision = asyncio.run(r.dispatcher.handle(_request(now, campaign=campaign)))
    assert decision.outcome == "sent"
    (email,) = r.producer.of(OutboundEmail)
    assert email.subject == "Ticket {#1} {{ follow-up"


def test_a_taiwanese_customer_is_called_in_the_traditional_chinese_template() -> None:
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    r = rig(_prefs(ranking=["voice"], locale="zh-TW"), now)
    messages = {
        "voice": {"zh-Hans": MessageTemplate(body="简体"), "zh-Hant": MessageTemplate(body="繁體")}
    }
    campaign = _request(now).campaign.model_copy(update={"messages": messages})
    asyncio.run(r.dispatcher.handle(_request(now, campaign=campaign)))
    (call,) = r.producer.of(OutboundVoice)
    # Written for Taiwan's script, the text is said in the customer's own language.
    assert (call.say, call.language, call.locale) == ("繁體", "zh-TW", "zh-Hant")


@pytest.mark.parametrize(
    ("locale", "language"),
    [
        ("zh-HK", "zh-HK"),
        ("zh-Hant-HK", "zh-Hant-HK"),
        ("zh-CN", "zh-CN"),
        # A customer of another language keeps the tag of the template picked for them.
        ("fr", "zh-Hans"),
    ],
)
def test_a_hong_kong_customer_is_called_in_cantonese_not_taiwanese_mandarin(
    locale: str, language: str
) -> None:
    # The Traditional template is the one a Hong Kong customer reads, but Hong Kong speaks
    # Cantonese: the call's language keeps the customer's region (the voice sender says zh-HK)
    # rather than the template's (zh-Hant, which it says as zh-TW).
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    r = rig(_prefs(ranking=["voice"], locale=locale), now)
    messages = {
        "voice": {"zh-Hans": MessageTemplate(body="简体"), "zh-Hant": MessageTemplate(body="繁體")}
    }
    campaign = _request(now).campaign.model_copy(update={"messages": messages})
    asyncio.run(r.dispatcher.handle(_request(now, campaign=campaign)))
    (call,) = r.producer.of(OutboundVoice)
    assert call.language == language
    assert call.locale == ("zh-Hans" if language in ("zh-CN", "zh-Hans") else "zh-Hant")


def test_a_message_that_does_not_render_gives_way_to_the_next_ranked_channel() -> None:
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    broken = MessageTemplate(body="{{ case.missing.field }}")
    r = rig(_prefs(ranking=["sms", "email"]), now)
    request = _request(now, campaign=_one_segment_campaign(max_attempts=2, sms=broken))
    decision = asyncio.run(r.dispatcher.handle(request))
    assert (decision.outcome, decision.channel) == ("sent", "email")
    assert len(r.producer.of(OutboundEmail)) == 1


def test_a_channel_failing_before_sending_fails_the_contact_only_when_nothing_is_left() -> None:
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    # No attempt left for another channel.
    r = rig(_prefs(ranking=["sms", "email"]), now)
    request = _request(now, campaign=_one_segment_campaign(max_attempts=1))
    decision = asyncio.run(r.dispatcher.handle(request))
    assert (decision.outcome, decision.rule, decision.channel) == ("failed", "segment-limit", "sms")
    # No other channel the customer ranks.
    r = rig(_prefs(ranking=["sms"]), now)
    request = _request(now, campaign=_one_segment_campaign(max_attempts=3))
    decision = asyncio.run(r.dispatcher.handle(request))
    assert (decision.outcome, decision.rule, decision.channel) == ("failed", "segment-limit", "sms")
    # No message went out: only the failed contact's status, for the campaign's stats.
    assert [type(body) for _, body in r.producer.sent] == [DeliveryStatus]


def test_a_failed_contact_reaches_the_campaign_stats_as_a_failed_status() -> None:
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    broken = MessageTemplate(body="{{ case.missing.field }}")
    r = rig(_prefs(ranking=["sms", "email"]), now)
    # Both ranked channels tried: the SMS does not render, the email is over no limit but the
    # attempts are used up by then.
    request = _request(now, campaign=_one_segment_campaign(max_attempts=1, sms=broken))
    decision = asyncio.run(r.dispatcher.handle(request))
    assert (decision.outcome, decision.rule) == ("failed", "render")
    (status,) = r.producer.of(DeliveryStatus)
    assert (status.status, status.reason, status.channel) == ("failed", "render", "sms")
    assert (status.request_id, status.campaign_id, status.customer_id) == ("r1", "c", "c1")
    assert status.message_id == derived_id("r1", "failed")  # one event however often decided
    # Decided again (a replay after a crash before the record): the same event.
    again = rig(_prefs(ranking=["sms", "email"]), now)
    asyncio.run(again.dispatcher.handle(request))
    assert again.producer.of(DeliveryStatus) == [status]


def test_a_still_applies_expression_that_fails_reaches_the_stats_without_a_channel() -> None:
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    r = rig(_prefs(), now)
    request = _request(now)
    request = request.model_copy(
        update={"campaign": request.campaign.model_copy(update={"still_applies": "case.x > 1"})}
    )
    decision = asyncio.run(r.dispatcher.handle(request))
    assert (decision.outcome, decision.rule) == ("failed", "still-applies")
    (status,) = r.producer.of(DeliveryStatus)
    assert (status.status, status.reason, status.channel) == ("failed", "still-applies", None)


def test_an_escalation_that_fails_before_sending_publishes_no_status() -> None:
    # Its contact was made (the first message's own statuses are counted).
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    broken = MessageTemplate(body="{{ case.missing.field }}")
    r = rig(_prefs(ranking=["email", "sms"]), now)
    request = _request(
        now,
        campaign=_one_segment_campaign(max_attempts=2, sms=broken),
        attempt=2,
        tried_channels=["email"],
        escalation_of="m-email",
    )
    decision = asyncio.run(r.dispatcher.handle(request))
    assert (decision.outcome, decision.rule) == ("failed", "render")
    assert not r.producer.of(DeliveryStatus)


# -- a contact whose channel failed before sending and whose next one was deferred ------------


def _marketing(request_id: str, campaign_id: str, email: MessageTemplate, now: datetime) -> Any:
    campaign = CampaignRef(
        id=campaign_id,
        version=1,
        name="n",
        topic="offers",
        priority="marketing",
        cap_policy="suppress",
        max_attempts=2,
        messages={"sms": {"en": T}, "email": {"en": email}},
    )
    return _request(now, request_id=request_id, trigger_key=request_id, campaign=campaign)


def _deferred_fallback() -> tuple[Any, TimerRequest]:
    """r1 at 06:00 in London: its email does not render, its SMS waits for 08:00."""
    six = datetime(2026, 1, 12, 6, tzinfo=UTC)
    prefs = _prefs(ranking=["email", "sms"], consents={"offers": {"sms": True, "email": True}})
    r = rig(prefs, six)
    broken = MessageTemplate(body="{{ case.missing.field }}")
    decision = asyncio.run(r.dispatcher.handle(_marketing("r1", "a", broken, six)))
    assert (decision.outcome, decision.rule, decision.channel) == ("deferred", "quiet-hours", "sms")
    (timer,) = r.producer.of(TimerRequest)
    assert timer.request is not None and timer.request.attempt == 2
    return r, timer


def test_a_first_contact_deferred_to_its_next_channel_is_held_back_by_the_caps() -> None:
    r, timer = _deferred_fallback()
    # 07:00: another marketing campaign reaches the customer, using the day's one contact.
    r.clock.now = datetime(2026, 1, 12, 7, tzinfo=UTC)
    other = asyncio.run(r.dispatcher.handle(_marketing("r2", "b", T, r.clock.now)))
    assert other.outcome == "sent"
    assert timer.request is not None and timer.due_at is not None
    r.clock.now = timer.due_at
    decision = asyncio.run(r.dispatcher.handle(timer.request))
    assert (decision.outcome, decision.rule) == ("suppressed", "frequency-cap")
    assert not r.producer.of(OutboundSms)
    # The contact ended unsent: the stats hear of it once, as they would of its first attempt.
    (status,) = r.producer.of(DeliveryStatus)
    assert (status.status, status.reason) == ("suppressed", "frequency-cap")
    assert status.message_id == derived_id("r1", "suppressed")


def test_a_first_contact_sent_on_a_deferred_channel_counts_towards_the_caps() -> None:
    r, timer = _deferred_fallback()
    assert timer.request is not None and timer.due_at is not None
    r.clock.now = timer.due_at
    decision = asyncio.run(r.dispatcher.handle(timer.request))
    assert (decision.outcome, decision.channel) == ("sent", "sms")
    r.clock.now = timer.due_at + timedelta(hours=1)
    other = asyncio.run(r.dispatcher.handle(_marketing("r2", "b", T, r.clock.now)))
    assert (other.outcome, other.rule) == ("suppressed", "frequency-cap")
    assert not r.producer.of(OutboundEmail)


# -- a status that comes before the writes after the send --------------------------------------


def _two_channels(now: datetime) -> tuple[Any, ContactRequest]:
    r = rig(_prefs(ranking=["sms", "email"]), now)
    return r, _request(now, max_attempts=2)  # no escalate_after_seconds: no timer either


def _failed(sms: OutboundSms, now: datetime) -> DeliveryStatus:
    return DeliveryStatus(
        message_id=sms.message_id,
        request_id=sms.request_id,
        campaign_id=sms.campaign_id,
        customer_id=sms.customer_id,
        channel="sms",
        status="failed",
        error_code="21211",
        at=now,
    )


def test_a_failure_reported_while_the_send_is_still_being_recorded_escalates() -> None:
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    r, request = _two_channels(now)
    lagging = asyncio.Event()  # the writes after the send (a batch window, a busy database)
    sent = asyncio.Event()
    attempt, content, publish = r.ledger.note_attempt, r.ledger.note_content, r.producer.publish

    async def attempt_after_send(doc: dict[str, Any]) -> None:
        if sent.is_set():
            await lagging.wait()
        await attempt(doc)

    async def content_after_send(*args: Any) -> None:
        await lagging.wait()
        await content(*args)

    async def publish_and_tell(event_type: Any, data: Any, **kw: Any) -> None:
        await publish(event_type, data, **kw)
        if isinstance(data, OutboundSms):
            sent.set()

    r.ledger.note_attempt, r.ledger.note_content = attempt_after_send, content_after_send
    r.producer.publish = publish_and_tell  # type: ignore[method-assign]

    async def scenario() -> None:
        deciding = asyncio.create_task(r.dispatcher.handle(request))
        await sent.wait()
        (sms,) = r.producer.of(OutboundSms)
        # The sender refuses the number at once and reports it failed.
        await r.dispatcher.on_status(_failed(sms, now))
        lagging.set()
        await deciding

    asyncio.run(scenario())
    nxt = _escalated_now(r)
    assert (nxt.attempt, nxt.tried_channels) == (2, ["sms"])


def test_a_decision_that_stopped_between_its_attempt_row_and_its_message_sends_it_again() -> None:
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    r, request = _two_channels(now)
    publish = r.producer.publish

    async def broker_down(event_type: Any, data: Any, **kw: Any) -> None:
        if isinstance(data, OutboundSms):
            raise ConnectionError("broker unavailable")
        await publish(event_type, data, **kw)

    r.producer.publish = broker_down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        asyncio.run(r.dispatcher.handle(request))
    assert len(r.ledger.attempts) == 1 and not r.producer.of(OutboundSms)  # a row, no message
    # The request is redelivered (its offset was not committed): the message goes out.
    r.producer.publish = publish  # type: ignore[method-assign]
    decision = asyncio.run(r.dispatcher.handle(request))
    assert (decision.outcome, decision.channel) == ("sent", "sms")
    (sms,) = r.producer.of(OutboundSms)
    assert set(r.ledger.attempts) == {sms.message_id}
    asyncio.run(r.dispatcher.on_status(_failed(sms, now)))
    assert _escalated_now(r).tried_channels == ["sms"]


# -- a failure escalates through the campaign's gate --------------------------------------------


def test_a_failure_escalates_through_the_scheduler_as_the_attempts_own_timer_due_now() -> None:
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    r = rig(_prefs(ranking=["sms", "email"]), now)
    request = _request(now, max_attempts=2)
    request = request.model_copy(
        update={"campaign": request.campaign.model_copy(update={"escalate_after_seconds": 600})}
    )
    asyncio.run(r.dispatcher.handle(request))
    (sms,) = r.producer.of(OutboundSms)
    (later,) = r.producer.of(TimerRequest)
    r.clock.now = now + timedelta(seconds=30)
    asyncio.run(r.dispatcher.on_status(_failed(sms, r.clock.now)))
    # Not straight to the dispatcher: a paused campaign's scheduler holds it, an archived one's
    # cancels it, as it would the escalation timer, which this is, moved to now.
    assert not r.producer.of(ContactRequest)
    at_once = [t for t in r.producer.of(TimerRequest) if t is not later]
    assert [(t.action, t.timer_id, t.key) for t in at_once] == [
        ("schedule", later.timer_id, later.key)
    ]
    assert at_once[0].due_at == r.clock.now and at_once[0].request == later.request
