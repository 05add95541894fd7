"""Dry run: who a campaign would contact, on which channel and when, and who not and why.

Applies the dispatcher's own rules from the kit: channel choice (`herald_kit.channels`:
ranking, consent per topic, valid address, a message for the channel), the customer's quiet
hours and the legal contact window per channel and region (`herald_kit.windows`), and the
frequency caps (`herald_kit.caps`), weighed against the customer's contacts of the last week
(as the scheduler saw them on delivery.status.v1) plus the contacts this run itself predicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from herald_contracts import CaseState, Channel, ContactPreferences
from herald_kit.caps import CapLimits, apply_caps
from herald_kit.channels import choose_channel
from herald_kit.windows import ContactWindow, LegalWindows, LocalWindow, contact_window
from herald_scheduler.domain.campaigns import (
    CampaignIn,
    EventTrigger,
    ScheduleTrigger,
    audience_reads_cases,
)
from herald_scheduler.domain.expressions import ExpressionError, evaluate


class Outcome(BaseModel):
    """One customer's predicted outcome."""

    customer_id: str
    case_id: str | None = None
    contacted: bool
    channel: Channel | None = None
    at: datetime | None = None
    reason: str = ""


class DryRunResult(BaseModel):
    """Who would and would not be contacted."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "contacted": [
                        {
                            "customer_id": "cust-1",
                            "case_id": "case-42",
                            "contacted": True,
                            "channel": "sms",
                            "at": "2026-11-24T09:00:00Z",
                            "reason": "ranked",
                        },
                        {
                            "customer_id": "cust-2",
                            "case_id": "case-42",
                            "contacted": True,
                            "channel": "sms",
                            "at": "2026-11-25T08:00:00Z",
                            "reason": "quiet-hours-deferred",
                        },
                    ],
                    "not_contacted": [
                        {
                            "customer_id": "cust-3",
                            "case_id": "case-42",
                            "contacted": False,
                            "channel": None,
                            "at": None,
                            "reason": "no-channel-left(sms:no-consent,email:no-valid-address)",
                        },
                        {
                            "customer_id": "cust-4",
                            "case_id": None,
                            "contacted": False,
                            "channel": None,
                            "at": None,
                            "reason": "no-preferences",
                        },
                    ],
                    "notes": [],
                }
            ]
        }
    )

    contacted: list[Outcome]
    not_contacted: list[Outcome]
    notes: list[str]


def _next_allowed(window: ContactWindow, at: datetime) -> datetime | None:
    """The first moment from `at` the windows allow; None when they never open."""
    try:
        return window.next_allowed(at)
    except ValueError:
        return None


def dry_run(
    campaign: CampaignIn,
    *,
    cases: list[CaseState],
    customers: list[str],
    contacts: dict[str, ContactPreferences],
    now: datetime,
    caps: Mapping[str, CapLimits] | None = None,
    history: Mapping[str, list[datetime]] | None = None,
    legal_windows: LegalWindows | None = None,
    critical_windows: Mapping[str, LocalWindow] | None = None,
) -> DryRunResult:
    """Predict a campaign's contacts without sending anything.

    `caps` are the frequency caps per priority (none: caps are not predicted); `history` the
    customers' earlier contacts at the campaign's priority; `legal_windows` and
    `critical_windows` the dispatcher's contact windows (none: only quiet hours are predicted).
    """
    yes: list[Outcome] = []
    no: list[Outcome] = []
    notes: list[str] = []
    limits = caps.get(campaign.priority.value, CapLimits()) if caps is not None else None
    if limits is None:
        notes.append("frequency caps are not predicted")
    if legal_windows is None:
        notes.append("legal contact windows are not predicted, only the customers' quiet hours")
    elif not campaign.limits.counts_towards_cap:
        notes.append("this campaign does not count towards frequency caps, nor is held by them")
    # Contacts this run predicts count towards the caps of the customers' next ones.
    predicted: dict[str, list[datetime]] = {}
    trigger = campaign.trigger
    expires = campaign.timing.expires_after_seconds

    def judge(customer: str, case: CaseState | None, at: datetime, triggered: datetime) -> None:
        case_id = case.case_id if case else None

        def refuse(reason: str, channel: Channel | None = None) -> None:
            no.append(
                Outcome(
                    customer_id=customer,
                    case_id=case_id,
                    contacted=False,
                    channel=channel,
                    reason=reason,
                )
            )

        prefs = contacts.get(customer)
        if prefs is None:
            refuse("no-preferences")
            return
        choice = choose_channel(prefs, campaign)
        if choice.channel is None:
            refuse(choice.reason)
            return
        channel = choice.channel
        window = contact_window(
            prefs,
            channel,
            critical=campaign.critical,
            legal_windows=legal_windows or {},
            critical_windows=critical_windows or {},
        )
        allowed = _next_allowed(window, at)
        if allowed is None:
            refuse("quiet-hours(windows never open)", channel)
            return
        when = allowed
        reason = "quiet-hours-deferred" if when != at else choice.reason
        if expires is not None and when >= triggered + timedelta(seconds=expires):
            refuse("expires-before-quiet-hours-end", channel)
            return
        if limits is not None:
            sent = [*(history or {}).get(customer, []), *predicted.get(customer, [])]
            capped = apply_caps(
                sent,
                when,
                limits,
                policy=campaign.limits.cap_policy,
                counts_towards_cap=campaign.limits.counts_towards_cap,
            )
            if capped.action == "suppress":
                refuse(f"frequency-cap({capped.cap})", channel)
                return
            if capped.action == "defer" and capped.due is not None:
                when = _next_allowed(window, capped.due) or capped.due
                reason = f"frequency-cap-deferred({capped.cap})"
                if expires is not None and when >= triggered + timedelta(seconds=expires):
                    refuse("expires-before-cap-frees", channel)
                    return
            if campaign.limits.counts_towards_cap:
                predicted.setdefault(customer, []).append(when)
        yes.append(
            Outcome(
                customer_id=customer,
                case_id=case_id,
                contacted=True,
                channel=channel,
                at=when,
                reason=reason,
            )
        )

    if isinstance(trigger, EventTrigger):
        if not cases:
            notes.append("no sample cases given: nothing to match")
        for case in cases:
            variables: dict[str, Any] = {
                "event": {"id": "dry-run", "source": "dry-run", "type": trigger.event_types[0]},
                "case": case.model_dump(mode="json"),
            }
            reason = _fails(trigger.filter, variables, "filter") or _fails(
                campaign.still_applies, {"case": variables["case"]}, "still-applies"
            )
            for customer in case.customer_ids:
                if reason:
                    no.append(
                        Outcome(
                            customer_id=customer,
                            case_id=case.case_id,
                            contacted=False,
                            reason=reason,
                        )
                    )
                else:
                    at = now + timedelta(seconds=campaign.timing.wait_seconds)
                    judge(customer, case, at, now)
    else:
        assert isinstance(trigger, ScheduleTrigger)
        fire = trigger.apscheduler_trigger().get_next_fire_time(None, now)
        if fire is None:
            notes.append("the schedule has no future fire time")
            return DryRunResult(contacted=yes, not_contacted=no, notes=notes)
        # An audience reading `cases` sees each customer's sample cases, as a fire sees the
        # cases on cases.state.v1 that name the customer.
        by_customer: dict[str, list[dict[str, Any]]] = {}
        for case in cases:
            for customer in case.customer_ids:
                by_customer.setdefault(customer, []).append(case.model_dump(mode="json"))
        if audience_reads_cases(trigger.audience) and not cases:
            notes.append("the audience reads `cases` but no sample cases were given: none apply")
        # A fire contacts each customer of its audience once: a customer listed more than once
        # in the sample is judged once, at its first place.
        unique = list(dict.fromkeys(customers))
        if len(unique) < len(customers):
            notes.append("customers listed more than once are judged once, as a fire contacts them")
        for customer in unique:
            prefs = contacts.get(customer)
            snapshot = (
                {"contact": prefs.model_dump(mode="json"), "cases": by_customer.get(customer, [])}
                if prefs
                else None
            )
            reason = _fails(trigger.audience, snapshot, "audience") if snapshot else ""
            if reason:
                no.append(Outcome(customer_id=customer, contacted=False, reason=reason))
            else:
                judge(customer, None, fire, fire)
    return DryRunResult(contacted=yes, not_contacted=no, notes=notes)


def _fails(expr: str | None, variables: dict[str, Any] | None, name: str) -> str:
    if not expr or variables is None:
        return ""
    try:
        return "" if evaluate(expr, variables) else name
    except ExpressionError:
        return f"{name}-error"
