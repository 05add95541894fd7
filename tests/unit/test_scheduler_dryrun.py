"""Dry run predictions: channel rules, quiet hours in the customer's zone, filters, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from herald_contracts import CaseState, ChannelAddress, ContactPreferences, QuietHours
from herald_kit.windows import LocalWindow, contact_window, default_legal_windows
from herald_scheduler.domain.campaigns import CampaignIn
from herald_scheduler.domain.dryrun import dry_run

NOW = datetime(2026, 3, 2, 21, 30, tzinfo=UTC)  # a Monday, 22:30 in Amsterdam


def _campaign(**changes: Any) -> CampaignIn:
    body: dict[str, Any] = {
        "name": "n",
        "topic": "service-updates",
        "trigger": {
            "kind": "event",
            "event_types": ["case.updated"],
            "filter": 'case.status == "delayed"',
        },
        "messages": {"sms": {"en": {"body": "{{ case.status }}"}}, "email": {"en": {"body": "x"}}},
    }
    body.update(changes)
    return CampaignIn.model_validate(body)


# A mobile number where the customer lives (the windows hold in the number's zones too); a UK
# mobile names no zone, so elsewhere only the customer's own zone counts.
NUMBERS = {"America/New_York": "+12015550100", "Europe/Amsterdam": "+31612345678"}


def _prefs(cid: str, **changes: Any) -> ContactPreferences:
    number = NUMBERS.get(changes.get("time_zone", "America/New_York"), "+447700900123")
    body: dict[str, Any] = {
        "customer_id": cid,
        "version": 1,
        "channels": {
            "sms": ChannelAddress(address=number),
            "email": ChannelAddress(address="a@example.com"),
        },
        "ranking": ["sms", "email"],
        "consents": {"service-updates": {"sms": True, "email": True}},
        "updated_at": NOW,
    }
    body.update(changes)
    return ContactPreferences.model_validate(body)


def _case(status: str, customers: list[str]) -> CaseState:
    return CaseState(
        case_id="case-1", version=1, customer_ids=customers, status=status, updated_at=NOW
    )


def after_quiet_hours(at: datetime, quiet: QuietHours | None, zone: str) -> datetime:
    """When the dry run would place an SMS for a customer with these quiet hours (no legal
    window): the kit's contact window, which the dispatcher uses too."""
    prefs = _prefs("q", quiet_hours=quiet, time_zone=zone)
    window = contact_window(prefs, "sms", critical=False, legal_windows={}, critical_windows={})
    return window.next_allowed(at)


def test_quiet_hours_defer_to_their_end_in_the_customers_zone() -> None:
    quiet = QuietHours(start="21:00", end="08:00")
    deferred = after_quiet_hours(NOW, quiet, "Europe/Amsterdam")
    assert deferred == datetime(2026, 3, 3, 7, 0, tzinfo=UTC)  # 08:00 CET
    # 21:30 UTC is 16:30 in New York: outside the window, so no change.
    assert after_quiet_hours(NOW, quiet, "America/New_York") == NOW
    assert after_quiet_hours(NOW, None, "Europe/Amsterdam") == NOW


def test_who_would_be_contacted_and_who_not_and_why() -> None:
    contacts = {
        "ok": _prefs("ok"),
        "email-only": _prefs("email-only", consents={"service-updates": {"email": True}}),
        "no-consent": _prefs("no-consent", consents={}),
        "sleeping": _prefs(
            "sleeping",
            time_zone="Europe/Amsterdam",
            quiet_hours=QuietHours(start="21:00", end="08:00"),
        ),
    }
    customers = ["ok", "email-only", "no-consent", "sleeping", "unknown"]
    result = dry_run(
        _campaign(),
        cases=[_case("delayed", customers)],
        customers=[],
        contacts=contacts,
        now=NOW,
    )
    got = {o.customer_id: (o.channel, o.reason) for o in result.contacted}
    assert got == {
        "ok": ("sms", "ranked"),
        "email-only": ("email", "ranked"),
        "sleeping": ("sms", "quiet-hours-deferred"),
    }
    sleeping = next(o for o in result.contacted if o.customer_id == "sleeping")
    assert sleeping.at == datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
    missed = {o.customer_id: o.reason for o in result.not_contacted}
    assert missed["unknown"] == "no-preferences"
    assert (
        missed["no-consent"].startswith("no-channel-left(")
        and "sms:no-consent" in missed["no-consent"]
    )


def test_filter_and_expiry_say_why_not() -> None:
    contacts = {
        "sleeping": _prefs(
            "sleeping",
            time_zone="Europe/Amsterdam",
            quiet_hours=QuietHours(start="21:00", end="08:00"),
        )
    }
    result = dry_run(
        _campaign(),
        cases=[_case("on time", ["sleeping"])],
        customers=[],
        contacts=contacts,
        now=NOW,
    )
    assert [(o.customer_id, o.reason) for o in result.not_contacted] == [("sleeping", "filter")]

    short = _campaign(timing={"expires_after_seconds": 3600})
    result = dry_run(
        short, cases=[_case("delayed", ["sleeping"])], customers=[], contacts=contacts, now=NOW
    )
    assert [o.reason for o in result.not_contacted] == ["expires-before-quiet-hours-end"]


def test_schedule_dry_run_applies_the_audience_at_the_next_fire() -> None:
    campaign = _campaign(
        trigger={
            "kind": "schedule",
            "cron": "0 9 * * mon",
            "time_zone": "Europe/Amsterdam",
            "audience": 'contact.locale == "nl"',
        }
    )
    contacts = {"nl": _prefs("nl", locale="nl"), "en": _prefs("en")}
    result = dry_run(campaign, cases=[], customers=["nl", "en"], contacts=contacts, now=NOW)
    assert [(o.customer_id, o.at) for o in result.contacted] == [
        ("nl", datetime(2026, 3, 9, 8, 0, tzinfo=UTC))
    ]
    assert [(o.customer_id, o.reason) for o in result.not_contacted] == [("en", "audience")]


def test_schedule_dry_run_judges_a_customer_listed_twice_once_as_a_fire_contacts_once() -> None:
    from herald_kit.caps import CapLimits

    campaign = _campaign(
        priority="marketing",
        trigger={"kind": "schedule", "cron": "0 9 * * mon", "time_zone": "Europe/Amsterdam"},
        limits={"cap_policy": "suppress"},
    )
    contacts = {"a": _prefs("a"), "b": _prefs("b")}
    result = dry_run(
        campaign,
        cases=[],
        customers=["a", "b", "a", "a"],
        contacts=contacts,
        now=NOW,
        caps={"marketing": CapLimits(per_day=1, per_week=3)},
    )
    # Judged once each, in order: the repeats neither count twice nor hit their own cap.
    assert [o.customer_id for o in result.contacted] == ["a", "b"]
    assert result.not_contacted == []
    assert any("more than once" in n for n in result.notes)


def test_schedule_dry_run_reads_each_customers_cases_for_the_audience() -> None:
    campaign = _campaign(
        trigger={
            "kind": "schedule",
            "cron": "0 9 * * mon",
            "time_zone": "Europe/Amsterdam",
            "audience": 'cases.exists(c, c.status == "delayed") && contact.locale == "en"',
        }
    )
    contacts = {c: _prefs(c) for c in ("late", "open", "none")}
    cases = [_case("delayed", ["late"]), _case("open", ["open", "late"])]
    result = dry_run(
        campaign, cases=cases, customers=["late", "open", "none"], contacts=contacts, now=NOW
    )
    assert [o.customer_id for o in result.contacted] == ["late"]
    assert [(o.customer_id, o.reason) for o in result.not_contacted] == [
        ("open", "audience"),
        ("none", "audience"),
    ]
    # Without sample cases nobody has a case, and the result says so.
    result = dry_run(campaign, cases=[], customers=["late"], contacts=contacts, now=NOW)
    assert result.contacted == [] and any("no sample cases" in n for n in result.notes)


def test_templates_may_loop_and_use_globals_but_not_unknown_fields() -> None:
    from herald_scheduler.domain.campaigns import template_problems

    ok = "{% for k in case.attributes %}{{ loop.index }} {{ k }}{% endfor %}{{ range(2) | list }}"
    assert template_problems(ok) == []
    assert template_problems("{{ case.nope }} {{ who }}") == [
        "unknown field 'case.nope'",
        "unknown field 'who'",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "{% set c = case %}{{ c.statuz }}",
        "{% for c in [case] %}{{ c.statuz }}{% endfor %}",
        "{% with c = contact %}{{ c.nmae }}{% endwith %}",
        "{{ case }}",
    ],
)
def test_a_record_taken_whole_is_refused_as_its_lookups_could_not_be_checked(text: str) -> None:
    """An alias would carry a misspelt field past the save and fail every send."""
    from herald_scheduler.domain.campaigns import template_problems

    problems = template_problems(text)
    assert problems and all("read field by field" in p for p in problems), problems


ZONES = ["UTC", "Europe/Amsterdam", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]


@given(
    at=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
    start=st.integers(0, 23 * 60 + 59),
    end=st.integers(0, 23 * 60 + 59),
    zone=st.sampled_from(ZONES),
)
def test_a_deferred_contact_lands_outside_quiet_hours_within_a_day(
    at: datetime, start: int, end: int, zone: str
) -> None:
    from zoneinfo import ZoneInfo

    assume(start != end)
    quiet = QuietHours(
        start=f"{start // 60:02d}:{start % 60:02d}", end=f"{end // 60:02d}:{end % 60:02d}"
    )
    when = after_quiet_hours(at, quiet, zone)
    assert at <= when <= at + timedelta(hours=25)
    local = when.astimezone(ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    assert not inside


def test_caps_apply_as_the_dispatcher_applies_them() -> None:
    from herald_kit.caps import CapLimits

    caps = {"marketing": CapLimits(per_day=1, per_week=3)}
    contacts = {"a": _prefs("a"), "b": _prefs("b")}
    cases = [
        _case("delayed", ["a", "b"]),
        _case("delayed", ["a"]).model_copy(update={"case_id": "case-2"}),
    ]
    earlier = {"b": [NOW - timedelta(hours=2)]}

    def run(**changes: Any) -> Any:
        return dry_run(
            _campaign(priority="marketing", **changes),
            cases=cases,
            customers=[],
            contacts=contacts,
            now=NOW,
            caps=caps,
            history=earlier,
        )

    result = run()
    by = {(o.customer_id, o.case_id): o for o in [*result.contacted, *result.not_contacted]}
    # a's first contact fits; its second, in the same run, waits a day for the first to age out.
    assert by[("a", "case-1")].at == NOW and by[("a", "case-1")].contacted
    assert by[("a", "case-2")].reason == "frequency-cap-deferred(per-day)"
    assert by[("a", "case-2")].at == NOW + timedelta(days=1)
    # b was contacted two hours ago (history): deferred until that ages out.
    assert by[("b", "case-1")].at == NOW + timedelta(hours=22)

    suppressing = run(limits={"cap_policy": "suppress"})
    assert {(o.customer_id, o.case_id, o.reason) for o in suppressing.not_contacted} == {
        ("a", "case-2", "frequency-cap(per-day)"),
        ("b", "case-1", "frequency-cap(per-day)"),
    }
    # A campaign that does not count towards caps is not held back by them.
    free = run(limits={"counts_towards_cap": False})
    assert len(free.contacted) == 3 and all(o.at == NOW for o in free.contacted)
    # Expiry before the cap frees: not contacted.
    short = run(timing={"expires_after_seconds": 3600})
    assert {o.reason for o in short.not_contacted} == {"expires-before-cap-frees"}


def test_legal_windows_defer_as_the_dispatcher_would() -> None:
    # 21:30 UTC: 16:30 in New York (inside 08:00-21:00), 22:30 in Amsterdam (after it).
    contacts = {
        "ny": _prefs("ny", time_zone="America/New_York"),
        "ams": _prefs("ams", time_zone="Europe/Amsterdam"),
        "ams-email": _prefs("ams-email", time_zone="Europe/Amsterdam", ranking=["email"]),
    }
    cases = [_case("delayed", list(contacts))]
    legal = default_legal_windows()
    result = dry_run(
        _campaign(), cases=cases, customers=[], contacts=contacts, now=NOW, legal_windows=legal
    )
    by = {o.customer_id: o for o in result.contacted}
    assert (by["ny"].at, by["ny"].reason) == (NOW, "ranked")
    # SMS waits for 08:00 in Amsterdam; email has no legal window by default.
    assert by["ams"].at == datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
    assert by["ams"].reason == "quiet-hours-deferred"
    assert (by["ams-email"].channel, by["ams-email"].at) == ("email", NOW)
    assert not any("legal contact windows" in n for n in result.notes)

    # A service-critical campaign may use its own window, as the dispatcher allows.
    critical = dry_run(
        _campaign(critical=True),
        cases=cases,
        customers=[],
        contacts=contacts,
        now=NOW,
        legal_windows=legal,
        critical_windows={"sms": LocalWindow(start="07:00", end="23:00")},
    )
    assert {o.customer_id: o.at for o in critical.contacted}["ams"] == NOW

    # Without the windows the run says what it did not predict.
    unknown = dry_run(_campaign(), cases=cases, customers=[], contacts=contacts, now=NOW)
    assert any("legal contact windows are not predicted" in n for n in unknown.notes)
