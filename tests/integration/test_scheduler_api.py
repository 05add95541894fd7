"""Campaign API on the real database: bad input names the field; versions conflict clearly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from test_scheduler_support import campaign_body, open_publisher, publish_audience

from support import eventually

SCHEDULE = {"kind": "schedule", "cron": "0 9 * * mon", "time_zone": "Europe/Amsterdam"}
DUTCH = {"campaign": campaign_body(trigger={**SCHEDULE, "audience": 'contact.locale == "nl"'})}


@pytest.mark.parametrize(
    "changes,field,words",
    [
        ({"trigger": {**SCHEDULE, "cron": "61 * * * *"}}, "trigger.schedule.cron", "cron"),
        ({"trigger": {**SCHEDULE, "cron": "every monday"}}, "trigger.schedule.cron", "cron"),
        ({"trigger": {**SCHEDULE, "cron": None}}, "trigger.schedule", "exactly one"),
        ({"trigger": {**SCHEDULE, "time_zone": "Mars/Olympus"}}, "trigger.schedule.time_zone", ""),
        # A directory of the zone database, a name too long for a file, the host's own zone.
        ({"trigger": {**SCHEDULE, "time_zone": "Europe"}}, "trigger.schedule.time_zone", "zone"),
        ({"trigger": {**SCHEDULE, "time_zone": "x" * 300}}, "trigger.schedule.time_zone", "zone"),
        ({"trigger": {**SCHEDULE, "time_zone": "localtime"}}, "trigger.schedule.time_zone", ""),
        (
            {"trigger": {**SCHEDULE, "audience": "contact.locale =="}},
            "trigger.schedule.audience",
            "",
        ),
        (
            # `case` is an event trigger's variable: an audience reads `contact` and `cases`.
            {"trigger": {**SCHEDULE, "audience": 'case.status == "delayed"'}},
            "trigger.schedule.audience",
            "unknown variable(s) case",
        ),
        (
            {"trigger": {**SCHEDULE, "audience": "cases.exists(c, c.status == wanted)"}},
            "trigger.schedule.audience",
            "unknown variable(s) wanted",
        ),
        (
            {"trigger": {"kind": "event", "event_types": ["case.updated"], "filter": "a ++ b("}},
            "trigger.event.filter",
            "parse",
        ),
        ({"messages": {"sms": {"en": {"body": "{% if %}"}}}}, "messages", "compile"),
        ({"messages": {"sms": {"en": {"body": "{{ case.colour }}"}}}}, "messages", "case.colour"),
        ({"messages": {"sms": {"en": {"body": "{{ secrets }}"}}}}, "messages", "secrets"),
        (
            {"messages": {"sms": {"en": {"body": "{{ case.status | nosuchfilter }}"}}}},
            "messages",
            "nosuchfilter",
        ),
        (
            {
                "messages": {
                    "email": {"en": {"body": "x", "html": "{{ case.case_id is nosuchtest }}"}}
                }
            },
            "messages",
            "email.en.html: template does not compile: No test named 'nosuchtest'",
        ),
        (
            {"messages": {"sms": {"en": {"body": '{{ case["colour"] }}'}}}},
            "messages",
            "case.colour",
        ),
        (
            {"messages": {"sms": {"en": {"body": '{{ campaign["secret"] }}'}}}},
            "messages",
            "campaign.secret",
        ),
        (
            {"timing": {"delay_seconds": 600, "expires_after_seconds": 60}},
            "timing",
            "expires_after_seconds",
        ),
        # Schedules that could never fire would be accepted and sit silently.
        (
            {"trigger": {"kind": "schedule", "at": "2020-01-01T09:00:00Z"}},
            "trigger.schedule.at",
            "not in the future",
        ),
        (
            {"trigger": {"kind": "schedule", "at": "9999-12-31T23:59:59-23:59"}},
            "trigger.schedule.at",
            "years",
        ),
        ({"trigger": {**SCHEDULE, "cron": "0 0 31 2 *"}}, "trigger.schedule.cron", "no date"),
        ({"trigger": {**SCHEDULE, "cron": "0 0 30 2 *"}}, "trigger.schedule.cron", "no date"),
        # Audiences that select no customer: every fire would contact nobody.
        (
            {"trigger": {**SCHEDULE, "audience": "1 + 1"}},
            "trigger.schedule.audience",
            "never select",
        ),
        (
            {"trigger": {**SCHEDULE, "audience": 'contact.locale.matches("(")'}},
            "trigger.schedule.audience",
            "regular expression",
        ),
    ],
)
async def test_bad_campaigns_are_refused_naming_the_field(
    client: httpx.AsyncClient, changes: dict[str, Any], field: str, words: str
) -> None:
    r = await client.post("/v1/campaigns", json=campaign_body(**changes))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["field"].startswith(field), problem
    assert words in problem["detail"], problem


async def test_a_schedule_campaign_is_accepted(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/campaigns",
        json=campaign_body(trigger={**SCHEDULE, "audience": 'contact.locale == "nl"'}),
    )
    assert r.status_code == 201, r.text
    assert r.json()["definition"]["trigger"]["time_zone"] == "Europe/Amsterdam"


async def test_a_one_off_whose_time_passed_is_refused_on_save_and_on_activation(
    client: httpx.AsyncClient,
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    trigger = {"kind": "schedule", "at": soon.isoformat(), "time_zone": "UTC"}
    r = await client.post("/v1/campaigns", json=campaign_body(trigger=trigger))
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)

    # Activated now, the draft would never fire: refused, and it stays a draft.
    r = await client.post(f"/v1/campaigns/{cid}/activate")
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == "trigger.schedule.at"
    assert (await client.get(f"/v1/campaigns/{cid}")).json()["status"] == "draft"

    # Saving it again with the same past time is refused too; a time to come is accepted.
    r = await client.put(
        f"/v1/campaigns/{cid}", json=campaign_body(trigger=trigger), headers={"If-Match": '"1"'}
    )
    assert r.status_code == 422 and r.json()["field"] == "trigger.schedule.at", r.text
    later = {**trigger, "at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    r = await client.put(
        f"/v1/campaigns/{cid}", json=campaign_body(trigger=later), headers={"If-Match": '"1"'}
    )
    assert r.status_code == 200, r.text
    assert (await client.post(f"/v1/campaigns/{cid}/activate")).status_code == 200


async def test_stale_missing_and_archived_versions_conflict(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/campaigns", json=campaign_body())
    cid = r.json()["id"]
    body = campaign_body(name="renamed")
    r = await client.put(f"/v1/campaigns/{cid}", json=body, headers={"If-Match": '"1"'})
    assert r.status_code == 200 and r.json()["version"] == 2

    # Someone else saved version 2 in between: a save based on version 1 is refused.
    r = await client.put(f"/v1/campaigns/{cid}", json=body, headers={"If-Match": '"1"'})
    assert r.status_code == 412 and r.json()["field"] == "If-Match"
    assert "version 2" in r.json()["detail"]

    r = await client.put(f"/v1/campaigns/{cid}", json=body)
    assert r.status_code == 428 and r.json()["field"] == "If-Match"

    # A digit outside ASCII ("²" counts as a digit to str.isdigit) is not a version.
    superscript_two = '"\u00b2"'.encode("latin-1")
    r = await client.put(f"/v1/campaigns/{cid}", json=body, headers={"If-Match": superscript_two})
    assert r.status_code == 412 and r.json()["field"] == "If-Match"

    assert (await client.post(f"/v1/campaigns/{cid}/archive")).status_code == 200
    r = await client.put(f"/v1/campaigns/{cid}", json=body, headers={"If-Match": '"2"'})
    assert r.status_code == 409 and r.json()["field"] == "status"

    r = await client.put("/v1/campaigns/nope", json=body, headers={"If-Match": '"1"'})
    assert r.status_code == 404


async def test_if_match_star_or_a_list_naming_the_current_version_saves(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/v1/campaigns", json=campaign_body())
    cid = r.json()["id"]
    body = campaign_body(name="renamed")
    # `*`: whatever version is current (RFC 9110); the save is still a new version.
    r = await client.put(f"/v1/campaigns/{cid}", json=body, headers={"If-Match": "*"})
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    assert r.headers["ETag"] == '"2"'
    # A list matches when one of its ETags is the current version.
    r = await client.put(f"/v1/campaigns/{cid}", json=body, headers={"If-Match": '"1", "2"'})
    assert r.status_code == 200 and r.json()["version"] == 3, r.text
    r = await client.put(f"/v1/campaigns/{cid}", json=body, headers={"If-Match": '"1", W/"2"'})
    assert r.status_code == 412 and "version 3" in r.json()["detail"], r.text
    assert (await client.post(f"/v1/campaigns/{cid}/archive")).status_code == 200
    r = await client.put(f"/v1/campaigns/{cid}", json=body, headers={"If-Match": "*"})
    assert r.status_code == 409 and r.json()["field"] == "status"


@pytest.mark.parametrize(
    "prepare,action,status",
    [
        (["archive"], "resume", "archived"),
        (["archive"], "activate", "archived"),
        (["archive"], "archive", "archived"),
        ([], "pause", "draft"),
        ([], "resume", "draft"),
        (["activate"], "activate", "active"),
    ],
)
async def test_a_disallowed_status_change_is_a_conflict_naming_the_status(
    client: httpx.AsyncClient, prepare: list[str], action: str, status: str
) -> None:
    cid = (await client.post("/v1/campaigns", json=campaign_body())).json()["id"]
    for step in prepare:
        assert (await client.post(f"/v1/campaigns/{cid}/{step}")).status_code == 200
    r = await client.post(f"/v1/campaigns/{cid}/{action}")
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == 409 and problem["field"] == "status", problem
    assert problem["detail"] == f"cannot {action} a campaign that is {status}", problem
    # Nothing changed.
    assert (await client.get(f"/v1/campaigns/{cid}")).json()["status"] == status
    r = await client.post(f"/v1/campaigns/nope/{action}")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem")


async def test_read_only_key_cannot_write(client: httpx.AsyncClient) -> None:
    from support import READ_ONLY_KEY

    r = await client.post(
        "/v1/campaigns",
        json=campaign_body(),
        headers={"Authorization": f"Bearer {READ_ONLY_KEY}"},
    )
    assert r.status_code == 403
    r = await client.get("/v1/campaigns", headers={"Authorization": f"Bearer {READ_ONLY_KEY}"})
    assert r.status_code == 200


async def test_dry_run_answers_who_when_and_why_without_sending(
    client: httpx.AsyncClient, infra: dict[str, str], namespace: str
) -> None:
    async with open_publisher(infra, namespace) as publisher:
        await publish_audience(publisher, ["dr-en"])
        await publish_audience(publisher, ["dr-nl"], locale="nl")

    async def known() -> bool:
        r = await client.post(
            "/v1/campaigns/dry-run",
            json={
                "campaign": campaign_body(
                    trigger={**SCHEDULE, "audience": 'contact.locale == "nl"'}
                ),
            },
        )
        assert r.status_code == 200, r.text
        return len(r.json()["contacted"]) + len(r.json()["not_contacted"]) == 2

    await eventually(known)
    r = await client.post(
        "/v1/campaigns/dry-run",
        json={
            "campaign": campaign_body(trigger={**SCHEDULE, "audience": 'contact.locale == "nl"'})
        },
    )
    body = r.json()
    assert [(o["customer_id"], o["channel"]) for o in body["contacted"]] == [("dr-nl", "sms")]
    assert [(o["customer_id"], o["reason"]) for o in body["not_contacted"]] == [
        ("dr-en", "audience")
    ]

    case = {
        "case_id": "case-d",
        "version": 1,
        "customer_ids": ["dr-en", "nobody"],
        "status": "delayed",
        "updated_at": "2026-03-02T10:00:00Z",
    }
    r = await client.post(
        "/v1/campaigns/dry-run",
        json={
            "campaign": campaign_body(
                topic="other-topic",
                trigger={
                    "kind": "event",
                    "event_types": ["case.updated"],
                    "filter": 'case.status == "delayed"',
                },
            ),
            "cases": [case],
        },
    )
    assert r.status_code == 200, r.text
    reasons = {o["customer_id"]: o["reason"] for o in r.json()["not_contacted"]}
    assert reasons == {"dr-en": "no-channel-left(sms:no-consent)", "nobody": "no-preferences"}
    # An audience over cases sees each customer's sample cases, as a fire sees cases.state.v1;
    # without customers named, the sample cases' customers are the audience sample.
    r = await client.post(
        "/v1/campaigns/dry-run",
        json={
            "campaign": campaign_body(
                trigger={**SCHEDULE, "audience": 'cases.exists(c, c.status == "delayed")'}
            ),
            "cases": [
                {**case, "customer_ids": ["dr-nl"]},
                {**case, "case_id": "case-o", "customer_ids": ["dr-en"], "status": "open"},
            ],
        },
    )
    assert r.status_code == 200, r.text
    assert [o["customer_id"] for o in r.json()["contacted"]] == ["dr-nl"]
    assert [(o["customer_id"], o["reason"]) for o in r.json()["not_contacted"]] == [
        ("dr-en", "audience")
    ]
    # A dry run is refused like a save when the draft is wrong.
    r = await client.post(
        "/v1/campaigns/dry-run",
        json={"campaign": campaign_body(trigger={**SCHEDULE, "cron": "nope"})},
    )
    assert r.status_code == 422 and r.json()["field"] == "campaign.trigger.schedule.cron"
