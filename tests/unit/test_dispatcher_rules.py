"""Dispatcher rules: channel choice by ranking and consent, SMS segments, locale fallback."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald_contracts import CampaignRef, ChannelAddress, ContactPreferences, MessageTemplate
from herald_dispatcher.domain.render import (
    RenderError,
    locale_chain,
    measure_sms,
    pick_template,
    render,
)
from herald_kit.channels import choose_channel

NOW = datetime(2026, 11, 24, tzinfo=UTC)
T = MessageTemplate(body="hi")
CAMPAIGN = CampaignRef(
    id="c",
    version=1,
    name="n",
    topic="service-updates",
    messages={"sms": {"en": T}, "email": {"en": T}, "voice": {"en": T}},
)
channels = st.sampled_from(["sms", "email", "voice"])


@given(
    ranking=st.lists(channels, unique=True),
    consents=st.dictionaries(channels, st.booleans()),
    statuses=st.dictionaries(channels, st.sampled_from(["valid", "bounced", "unreachable"])),
)
def test_choice_is_first_ranked_channel_with_consent_and_valid_address(
    ranking: list[str], consents: dict[str, bool], statuses: dict[str, str]
) -> None:
    prefs = ContactPreferences(
        customer_id="x",
        version=1,
        ranking=ranking,  # type: ignore[arg-type]
        channels={c: ChannelAddress(address="a", status=s) for c, s in statuses.items()},  # type: ignore[arg-type]
        consents={"service-updates": consents},  # type: ignore[dict-item]
        updated_at=NOW,
    )
    choice = choose_channel(prefs, CAMPAIGN)
    allowed = [c for c in ranking if consents.get(c) and statuses.get(c) == "valid"]
    assert choice.channel == (allowed[0] if allowed else None)
    if choice.channel is not None:
        assert consents[choice.channel] is True


@pytest.mark.parametrize(
    "body,encoding,segments",
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("€" * 80, "GSM-7", 1),  # extension characters count twice
        ("你" * 70, "UCS-2", 1),
        ("你" * 71, "UCS-2", 2),
        ("您的工程师将于16:00到达" * 5, "UCS-2", 1),  # 70 code units: one segment
        ("您的工程师将于16:00到达" * 6, "UCS-2", 2),
        # 306 septets fit two parts of 153, but the escape pair of € cannot straddle them.
        ("a" * 152 + "€" + "a" * 152, "GSM-7", 3),
        ("a" * 151 + "€" + "a" * 153, "GSM-7", 2),
        # 134 code units fit two parts of 67, but no emoji (a surrogate pair) can be cut in two.
        ("😀" * 67, "UCS-2", 3),
        ("é" + "😀" * 33 + "é" + "😀" * 33, "UCS-2", 2),
    ],
)
def test_sms_segments(body: str, encoding: str, segments: int) -> None:
    m = measure_sms(body)
    assert (m.encoding, m.segments) == (encoding, segments)


@pytest.mark.parametrize(
    ("available", "customer", "picked"),
    [
        # The script a region implies (CLDR likely subtags): Taiwan reads Traditional Chinese.
        (["zh-Hans", "zh-Hant"], "zh-TW", "zh-Hant"),
        (["zh-Hans", "zh-Hant"], "zh-HK", "zh-Hant"),
        (["zh-Hans", "zh-Hant"], "zh-SG", "zh-Hans"),
        (["zh-Hans", "zh-Hant"], "zh", "zh-Hans"),
        (["zh-CN", "zh-TW"], "zh-Hant-TW", "zh-TW"),
        (["zh-CN", "zh-TW"], "zh-Hant", "zh-TW"),
        (["zh-CN", "zh-TW"], "zh-Hans-SG", "zh-CN"),
        (["zh", "zh-Hant-HK"], "zh-TW", "zh-Hant-HK"),
        # Another template of the customer's own language before English or any other.
        (["de", "en-US"], "en-GB", "en-US"),
        (["en", "en-US"], "en-GB", "en"),
        (["es", "pt-PT", "en"], "pt-BR", "pt-PT"),
        # English, any English, before the first locale.
        (["de", "en-GB"], "fr-FR", "en-GB"),
        (["de", "en-GB", "en-US"], "fr", "en-US"),
        (["de", "es"], "fr", "de"),
        (["de", "en"], "not a tag", "en"),
    ],
)
def test_a_customer_gets_the_template_of_the_language_and_script_they_read(
    available: list[str], customer: str, picked: str
) -> None:
    by_locale = {tag: MessageTemplate(body=tag) for tag in available}
    assert pick_template(by_locale, customer)[0] == picked


@pytest.mark.parametrize(
    ("value", "zone", "shown"),
    [
        ("2026-12-24", "America/Los_Angeles", "December 24, 2026"),
        ("2026-12-24", "Pacific/Kiritimati", "December 24, 2026"),
        (date(2026, 12, 24), "America/Los_Angeles", "December 24, 2026"),
        # An instant is shown on the customer's calendar; a naive one is UTC.
        ("2026-12-24T02:00:00+00:00", "America/Los_Angeles", "December 23, 2026"),
        ("2026-12-24T02:00:00", "America/Los_Angeles", "December 23, 2026"),
        (datetime(2026, 12, 24, 2), "America/Los_Angeles", "December 23, 2026"),
        ("2026-12-24T02:00:00", "Europe/Paris", "December 24, 2026"),
    ],
)
def test_a_date_is_shown_as_the_day_it_is(value: object, zone: str, shown: str) -> None:
    out = render("{{ due|date('long') }}", {"due": value}, locale="en-US", tz=zone)
    assert out == shown


def test_a_naive_date_time_is_utc_in_every_filter() -> None:
    values = {"at": "2026-12-24T14:30:00", "aware": "2026-12-24T14:30:00+00:00"}
    for filt in ("datetime", "time", "date"):
        naive = render(f"{{{{ at|{filt} }}}}", values, locale="en-GB", tz="Asia/Tokyo")
        aware = render(f"{{{{ aware|{filt} }}}}", values, locale="en-GB", tz="Asia/Tokyo")
        assert naive == aware
    assert render("{{ at|time }}", values, locale="en-GB", tz="Asia/Tokyo") == "23:30"
    # A calendar date as a date-time: the start of that day where the customer is.
    assert render("{{ d|time }}", {"d": "2026-12-24"}, tz="America/New_York") == "12:00\u202fAM"


def test_locale_fallback() -> None:
    assert locale_chain("zh-Hans-CN") == ["zh-Hans-CN", "zh-Hans", "zh", "en"]
    by_locale = {"en": MessageTemplate(body="en"), "zh-CN": MessageTemplate(body="zh")}
    assert pick_template(by_locale, "zh-cn")[0] == "zh-CN"
    assert pick_template(by_locale, "fr-FR")[0] == "en"


def test_sandbox_refuses_unsafe_templates() -> None:
    with pytest.raises(RenderError):
        render("{{ case.__class__.__mro__ }}", {"case": {}})
    with pytest.raises(RenderError):
        render("{{ missing.field }}", {})
    assert render("{{ case.status }}", {"case": {"status": "ok"}}) == "ok"


def test_babel_formats_in_customer_locale_and_zone() -> None:
    case = {"case": {"at": "2026-11-24T08:05:00+00:00", "n": 12345.5}}
    zh = render(
        "{{ case.at | time }} {{ case.at | date }}", case, locale="zh-CN", tz="Asia/Shanghai"
    )
    assert zh == "16:05 2026年11月24日"
    us = render(
        "{{ case.at | time }} {{ case.n | number }}", case, locale="en-US", tz="America/New_York"
    )
    assert us == "3:05\u202fAM 12,345.5"
    de = render("{{ case.n | number }}", case, locale="de-DE", tz="Europe/Berlin")
    assert de == "12.345,5"
    with pytest.raises(RenderError):
        render("{{ case.n | time }}", case)


def test_quiet_hours_across_midnight_and_dst() -> None:
    from zoneinfo import ZoneInfo

    from herald_kit.windows import ContactWindow, Window

    london = ContactWindow(
        tz=ZoneInfo("Europe/London"),
        allowed=Window.parse("08:00", "21:00"),
        quiet=Window.parse("22:00", "09:30"),
    )
    # 23:00 local in winter (UTC+0): next moment is 09:30 the next day.
    assert london.next_allowed(datetime(2026, 11, 24, 23, tzinfo=UTC)) == datetime(
        2026, 11, 25, 9, 30, tzinfo=UTC
    )
    # The night the clocks go forward (29 March 2026): 09:30 BST is 08:30 UTC.
    assert london.next_allowed(datetime(2026, 3, 29, 0, 30, tzinfo=UTC)) == datetime(
        2026, 3, 29, 8, 30, tzinfo=UTC
    )
    noon = datetime(2026, 11, 24, 12, tzinfo=UTC)
    assert london.next_allowed(noon) == noon


def test_no_channel_reason_names_the_one_rule_that_excluded_every_channel() -> None:
    from herald_kit.channels import ChannelChoice

    assert ChannelChoice(None, "no-ranking").code == "no-ranking"
    consent = "no-channel-left(sms:no-consent,email:no-consent)"
    assert ChannelChoice(None, consent).code == "no-consent"
    # Channels already tried do not change why the rest were excluded.
    tried = "no-channel-left(sms:tried,email:no-valid-address)"
    assert ChannelChoice(None, tried).code == "no-valid-address"
    mixed = "no-channel-left(sms:no-consent,email:no-message)"
    assert ChannelChoice(None, mixed).code == "no-channel"
    assert ChannelChoice(None, "no-channel-left(sms:tried)").code == "no-channel"
