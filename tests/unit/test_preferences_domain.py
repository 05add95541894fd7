"""Preferences rules without I/O: the ledger fold, keywords, bounces, the centre's form."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from herald_contracts import DeliveryStatus, EngagementReply, keyword
from herald_kit import InvalidInput
from herald_preferences.api.contacts import merge_patch
from herald_preferences.api.i18n import pick_locale
from herald_preferences.domain.bounces import address_status
from herald_preferences.domain.centre import contact_from_form
from herald_preferences.domain.contacts import ContactIn
from herald_preferences.domain.ledger import ALL_TOPICS, Change, diff, entries_for, fold
from herald_preferences.domain.service import next_contact
from herald_preferences.messaging.handlers import reply_changes

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _entries(*writes: list[Change]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for version, changes in enumerate(writes, start=1):
        out += entries_for("c1", changes, version=version, source="api", actor="t", at=NOW)
    return out


def test_fold_applies_entries_in_ledger_order_whatever_order_they_arrive_in() -> None:
    entries = _entries(
        [Change("billing", "sms", True), Change("marketing", "email", True)],
        [Change("billing", "sms", False)],
        [Change("billing", "sms", True)],
    )
    assert fold(entries).effective() == {"billing": {"sms": True}, "marketing": {"email": True}}
    assert fold(reversed(entries)).effective() == fold(entries).effective()


def test_stop_withdraws_every_topic_of_a_channel_and_start_restores_them() -> None:
    entries = _entries(
        [Change("billing", "sms", True), Change("billing", "email", True)],
        [Change(ALL_TOPICS, "sms", False)],
    )
    consent = fold(entries)
    assert consent.effective() == {"billing": {"email": True, "sms": False}}
    assert consent.stopped == {"sms"}
    entries += _entries([], [], [Change(ALL_TOPICS, "sms", True)])
    assert fold(entries).effective() == {"billing": {"email": True, "sms": True}}


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["billing", "marketing", ALL_TOPICS]),
            st.sampled_from(["sms", "email"]),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_the_last_word_wins_and_stop_only_ever_narrows(steps: list[tuple[str, str, bool]]) -> None:
    entries = _entries(*[[Change(t, c, g)] for t, c, g in steps])
    consent = fold(entries).effective()
    for topic, channels in consent.items():
        for channel, ok in channels.items():
            last_topic = [g for t, c, g in steps if t == topic and c == channel][-1]
            last_all = [g for t, c, g in steps if t == ALL_TOPICS and c == channel]
            assert ok == (last_topic and (not last_all or last_all[-1]))


@pytest.mark.parametrize(
    "source", ["email-unsubscribe", "sms-keyword", "voice-keypad", "preference-centre"]
)
def test_a_customers_own_withdrawal_of_a_topic_is_not_regranted_by_stale_crm_data(
    source: str,
) -> None:
    body = ContactIn.model_validate(
        {
            "customer_id": "c1",
            "channels": {"email": "ada@example.com", "sms": "+447911123456"},
            "consents": {"marketing": {"email": True, "sms": True}},
        }
    )
    ledger = entries_for(
        "c1",
        [Change("marketing", "email", True), Change("marketing", "sms", True)],
        version=1,
        source="api",
        actor="crm",
        at=NOW,
    ) + entries_for(
        "c1", [Change("marketing", "email", False)], version=2, source=source, actor="c", at=NOW
    )
    current = {"_id": "c1", "version": 2, "channels": {}, "pending": []}

    def write(by: str, contact: ContactIn = body) -> dict[str, Any]:
        return next_contact(
            contact, current=current, ledger=ledger, region="GB", source=by, actor="x", now=NOW
        )

    for by in ("api", "import"):  # the CRM restates what it had: the withdrawal stands
        doc = write(by)
        assert doc["consents"] == {"marketing": {"email": False, "sms": True}}
        assert doc["pending"] == []
    # The customer opting in again in the preference centre is theirs to do.
    doc = write("preference-centre")
    assert doc["consents"] == {"marketing": {"email": True, "sms": True}}
    # A withdrawal the CRM itself recorded is the CRM's to undo.
    ledger[-1] = {**ledger[-1], "source": "api"}
    assert write("api")["consents"] == {"marketing": {"email": True, "sms": True}}


def test_diff_records_only_what_changes_and_leaves_unnamed_consent_alone() -> None:
    before = fold(_entries([Change("billing", "sms", True), Change("marketing", "sms", True)]))
    assert diff(before, {"billing": {"sms": True, "email": False}}) == [
        Change("billing", "email", False)
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("STOP", "stop"),
        (" stop ", "stop"),
        ("Stop.", "stop"),
        ("STOPALL", "stop"),
        ("unsubscribe", "stop"),
        ("Cancel", "stop"),
        ("END", "stop"),
        ("quit", "stop"),
        ("revoke", "stop"),
        ("optout", "stop"),
        ("退订", "stop"),
        ("TD", "stop"),
        ("ｔｄ", "stop"),  # full-width letters from a Chinese keyboard  # noqa: RUF001
        ("START", "start"),
        ("unstop", "start"),
        ("please stop calling me at night", None),
        ("yes", "start"),
        ("OPT-IN", "start"),
        ("Opt out", "stop"),
        ("stop all", "stop"),
        ("取消订阅。", "stop"),
        ("help", "help"),
        ("", None),
        (None, None),
        # As phones write them; the SMS sender reads the same vocabulary.
        ("STOP 🛑", "stop"),
        ("Stop\u200b", "stop"),
        ("STOP\ufe0f", "stop"),
        ("(STOP)", "stop"),
        ("STOP STOP", "stop"),
        ("【退订】", "stop"),
        ("退訂", "stop"),
        ("取消訂閱", "stop"),
        ("帮助", "help"),
        ("please stop texting me", "stop"),
        ("unsubscribe me", "stop"),
        ("don't stop", None),
        ("stop by tomorrow", None),
    ],
)
def test_keywords(text: str | None, expected: str | None) -> None:
    assert keyword(text) == expected


@pytest.mark.parametrize("text", ["STOP 🛑", "(Stop)", "退訂", "Please stop texting me"])
def test_a_reply_that_reads_as_stop_withdraws_the_channel(text: str) -> None:
    """A reply the sender did not read as a keyword (an older sender, a shared number) still
    withdraws consent when its text is one."""
    reply = EngagementReply(
        reply_id="r1", customer_id="c1", channel="sms", intent="other", text=text, at=NOW
    )
    assert reply_changes(reply) == ([Change(ALL_TOPICS, "sms", False)], "sms-keyword")


def _status(
    channel: str, status: str, code: str | None, reason: str | None = None
) -> DeliveryStatus:
    return DeliveryStatus(
        message_id="m",
        request_id="r",
        campaign_id="c",
        customer_id="c1",
        channel=channel,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        error_code=code,
        reason=reason,
        at=NOW,
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (_status("email", "failed", "5.1.1"), "bounced"),
        (_status("email", "failed", "550"), "bounced"),
        (_status("email", "failed", "4.2.2"), None),
        (_status("email", "failed", None, "hard bounce: mailbox gone"), "bounced"),
        (_status("email", "failed", "5.7.1"), None),  # a policy refusal, not the mailbox
        (_status("email", "failed", "smtp-554", "relay refused the message: 554 at DATA"), None),
        (_status("sms", "undelivered", "30003"), None),  # handset off: it comes back
        (_status("sms", "failed", "30005"), "unreachable"),
        (_status("sms", "undelivered", "30007"), None),  # carrier filtering: not the number
        (_status("voice", "failed", "13224"), "unreachable"),
        (_status("sms", "delivered", None), None),
    ],
)
def test_which_failures_mark_an_address(status: DeliveryStatus, expected: str | None) -> None:
    assert address_status(status) == expected


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    assert merge_patch(target, {"b": {"c": None, "x": 4}, "e": [2], "a": None}) == {
        "b": {"d": 3, "x": 4},
        "e": [2],
    }


CURRENT = {
    "_id": "c1",
    "channels": {"sms": {"address": "+12015550100", "status": "valid"}},
    "locale": "en",
    "time_zone": "UTC",
}


def test_the_form_lifts_a_stop_only_when_the_customer_opts_in_on_that_channel() -> None:
    form = {"rank-1": ["sms"], "consent:billing:sms": ["1"]}
    contact, lifted = contact_from_form(
        CURRENT, form, topics=["billing", "marketing"], stopped=["sms"]
    )
    assert contact["ranking"] == ["sms"]
    # The stopped channel's boxes show unticked: an unticked one is no answer, and leaves the
    # grant kept from before the STOP as it was.
    assert contact["consents"] == {"billing": {"sms": True}}
    assert lifted == [Change(ALL_TOPICS, "sms", True)]
    contact, lifted = contact_from_form(
        CURRENT, {"rank-1": ["sms"]}, topics=["billing"], stopped=["sms"]
    )
    assert lifted == [] and contact["consents"] == {}


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"rank-1": ["fax"]}, "rank-1"),
        ({"rank-1": ["email"]}, "rank-1"),  # no email address on file
        ({"rank-1": ["sms"], "rank-2": ["sms"]}, "rank-2"),
        ({"quiet-start": ["22:00"], "quiet-end": [""]}, "quiet-end"),
    ],
)
def test_the_form_refuses_bad_choices(form: dict[str, list[str]], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        contact_from_form(CURRENT, form, topics=["billing"], stopped=[])
    assert err.value.field == field


@pytest.mark.parametrize(
    ("prefs", "expected"),
    [
        (("zh-CN", None), "zh_CN"),
        (("zh", None), "zh_CN"),
        (("zh-Hans-CN", None), "zh_CN"),
        (("en-GB", "zh-CN"), "en"),
        ((None, "zh-CN,zh;q=0.9,en;q=0.8"), "zh_CN"),
        (("fr-FR", None), "en"),
        (("not a tag", None), "en"),
    ],
)
def test_locale_choice(prefs: tuple[str | None, str | None], expected: str) -> None:
    assert pick_locale(*prefs) == expected


@pytest.mark.parametrize(
    ("channel", "intent", "source"),
    [
        ("sms", "stop", "sms-keyword"),
        ("sms", "start", "sms-keyword"),
        ("voice", "stop", "voice-keypad"),  # a key pressed on a call, not a text
        ("email", "stop", "email-unsubscribe"),
    ],
)
def test_a_reply_withdraws_consent_with_evidence_of_how_it_was_given(
    channel: str, intent: str, source: str
) -> None:
    reply = EngagementReply(
        reply_id="r1",
        customer_id="c1",
        channel=channel,  # type: ignore[arg-type]
        intent=intent,  # type: ignore[arg-type]
        at=NOW,
    )
    assert reply_changes(reply) == ([Change(ALL_TOPICS, channel, intent == "start")], source)


@pytest.mark.parametrize(
    "zone",
    # A directory of the zone database, names the OS refuses to open, paths, the machine's own.
    ["Europe", "Europe/", "America", "x" * 300, "../../etc/passwd", "UTC\x00", "localtime", ""],
)
def test_a_time_zone_must_be_an_iana_zone_name(zone: str) -> None:
    with pytest.raises(ValidationError) as err:
        ContactIn(customer_id="c1", time_zone=zone)
    assert err.value.errors()[0]["loc"] == ("time_zone",)


@pytest.mark.parametrize(
    "zone", ["UTC", "Europe/London", "Asia/Shanghai", "America/Argentina/Salta"]
)
def test_iana_zone_names_are_accepted(zone: str) -> None:
    assert ContactIn(customer_id="c1", time_zone=zone).time_zone == zone
