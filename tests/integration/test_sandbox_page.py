"""The sandbox's page and SMTP sink API: what went out, per recipient, safely rendered."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import httpx
import pytest
from fastapi import FastAPI, Response
from twilio.twiml.voice_response import VoiceResponse
from twilio_support import SANDBOX_SID, SANDBOX_TOKEN, sandbox_serving, serving

from herald_sandbox.app import create_app
from herald_sandbox.config import Settings
from support import eventually, free_port, running, unique_phone


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[httpx.AsyncClient, int]]:
    """The sandbox app with its SMTP sink on a free port."""
    app = create_app(Settings(smtp_port=0))
    async with running(app) as client:
        yield client, app.state.smtp.port


async def smtp_send(port: int, to: str, subject: str, body: str) -> None:
    email = EmailMessage()
    email["From"] = "updates@herald.example"
    email["To"] = to
    email["Subject"] = subject
    email.set_content(body)
    await aiosmtplib.send(email, hostname="127.0.0.1", port=port, start_tls=False)


async def test_page_lists_sms_and_emails_per_recipient_and_escapes_content(
    sandbox: tuple[httpx.AsyncClient, int],
) -> None:
    client, port = sandbox
    settings = Settings()
    phone = unique_phone()
    auth = base64.b64encode(
        f"{settings.twilio_account_sid}:{settings.twilio_auth_token.get_secret_value()}".encode()
    ).decode()
    r = await client.post(
        f"/2010-04-01/Accounts/{settings.twilio_account_sid}/Messages.json",
        data={"To": phone, "From": "+15005550006", "Body": "Your engineer is on the way"},
        headers={"Authorization": f"Basic {auth}"},
    )
    assert r.status_code == 201, r.text
    await smtp_send(port, "ann@example.com", "<script>alert(1)</script> booked", "See you at 2")
    await smtp_send(port, "bob@example.com", "Bob's visit", "Bob's text")

    page = await client.get("/sandbox")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "1 SMS, 0 calls, 2 emails." in html
    for recipient in (phone, "ann@example.com", "bob@example.com"):
        assert f"<h2>{recipient}</h2>" in html
    assert "Your engineer is on the way" in html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; booked" in html

    only_bob = (await client.get("/sandbox", params={"to": "BOB@example.com"})).text
    assert "Bob&#39;s visit" in only_bob
    assert "ann@example.com" not in only_bob and phone not in only_bob
    assert "0 SMS, 0 calls, 1 emails." in only_bob


async def test_sink_rules_refuse_mail_as_told_and_bad_rules_are_problems(
    sandbox: tuple[httpx.AsyncClient, int],
) -> None:
    client, port = sandbox
    r = await client.post(
        "/sandbox/api/emails/rules", json={"recipient": "Gone@Example.com", "code": 550}
    )
    assert r.status_code == 201
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as info:
        await smtp_send(port, "gone@example.com", "Hi", "text")
    assert info.value.recipients[0].code == 550
    r = await client.post(
        "/sandbox/api/emails/rules",
        json={"recipient": "later@example.com", "code": 451, "stage": "data", "times": 1},
    )
    assert r.status_code == 201
    with pytest.raises(aiosmtplib.SMTPDataError) as data_info:
        await smtp_send(port, "later@example.com", "Hi", "text")
    assert data_info.value.code == 451
    await smtp_send(port, "later@example.com", "Hi again", "text")  # only once, as told
    items = (await client.get("/sandbox/api/emails", params={"to": "later@example.com"})).json()
    assert [i["subject"] for i in items["items"]] == ["Hi again"]
    assert (await client.get("/sandbox/api/emails", params={"to": "gone@example.com"})).json()[
        "count"
    ] == 0

    r = await client.post("/sandbox/api/emails/rules", json={"recipient": "x@y.z", "code": 250})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == "code"
    r = await client.post(
        "/sandbox/api/emails/rules", json={"code": 450, "message": "bad\r\n250 injected"}
    )
    assert r.status_code == 422
    assert r.json()["field"] == "message"

    assert (await client.delete("/sandbox/api/emails/rules")).status_code == 204
    await smtp_send(port, "gone@example.com", "Back", "text")
    assert (await client.get("/sandbox/api/emails", params={"to": "gone@example.com"})).json()[
        "count"
    ] == 1


async def test_page_lists_placed_calls_under_their_recipient_with_status(browser: Any) -> None:
    """A call placed on the fake Calls resource shows under its number, with how it ended."""
    answered, busy = unique_phone(), unique_phone()
    twiml = FastAPI()

    @twiml.post("/voice")
    async def voice() -> Response:
        said = VoiceResponse()
        said.say("Your engineer arrives at two")
        return Response(str(said), media_type="application/xml")

    async with (
        serving(twiml, free_port()) as app_url,
        sandbox_serving() as sandbox_url,
        httpx.AsyncClient(base_url=sandbox_url, auth=(SANDBOX_SID, SANDBOX_TOKEN)) as client,
    ):
        r = await client.post(
            "/sandbox/api/twilio/behaviour",
            json={"faults": [{"kind": "busy", "share": 1, "to_prefix": busy}]},
        )
        assert r.status_code == 200, r.text
        for to in (answered, busy):
            r = await client.post(
                f"/2010-04-01/Accounts/{SANDBOX_SID}/Calls.json",
                data={"To": to, "From": "+15005550006", "Url": f"{app_url}/voice"},
            )
            assert r.status_code == 201, r.text

        async def ended() -> bool:
            calls = (await client.get("/sandbox/api/calls")).json()["items"]
            return {c["status"] for c in calls} == {"completed", "busy"}

        await eventually(ended, within=10)

        page = await browser.new_page()
        await page.goto(f"{sandbox_url}/sandbox")
        assert "0 SMS, 2 calls, 0 emails." in (await page.text_content("body") or "")
        done = page.locator("section.recipient", has=page.locator("h2", has_text=answered))
        assert await done.locator("tr.call").count() == 1
        row = done.locator("tr.call td")
        assert await row.nth(2).text_content() == "completed"
        assert "Your engineer arrives at two" in (await row.nth(3).text_content() or "")
        refused = page.locator("section.recipient", has=page.locator("h2", has_text=busy))
        assert await refused.locator("tr.call td").nth(2).text_content() == "busy"
