"""Dispatcher rules: channel choice by ranking and consent, SMS segments, locale fallback."""

from __future__ import annotations

from datetime import UTC, datetime

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
    ],
)
def test_sms_segments(body: str, encoding: str, segments: int) -> None:
    m = measure_sms(body)
    assert (m.encoding, m.segments) == (encoding, segments)


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
