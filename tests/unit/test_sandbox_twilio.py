"""The sandbox answers as Twilio does: auth, errors, rate limit (429/20429), faults, signatures."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from twilio.request_validator import RequestValidator

from herald_sandbox.app import create_app
from herald_sandbox.config import Settings

SID = "AC00000000000000000000000000000000"
TOKEN = "sandbox-auth-token"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()}
MSGS = f"/2010-04-01/Accounts/{SID}/Messages.json"
CALLS = f"/2010-04-01/Accounts/{SID}/Calls.json"


class Hooks:
    """Stands in for the application the sandbox calls back: captures each webhook (the
    sandbox's aiohttp session is replaced by this) and answers with TwiML per path."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], str]] = []
        self.twiml: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def post(self, url: str, *, data: str, headers: dict[str, str]) -> AsyncIterator[_Answer]:
        # Twilio posts its webhooks as a form.
        assert headers["Content-Type"] == "application/x-www-form-urlencoded"
        params = dict(parse_qsl(data, keep_blank_values=True, strict_parsing=True))
        self.calls.append((url, params, headers["X-Twilio-Signature"]))
        yield _Answer(self.twiml.get(urlsplit(url).path, "<Response/>"))

    async def close(self) -> None:
        pass


class _Answer:
    status = 200

    def __init__(self, body: str) -> None:
        self.body = body

    async def text(self) -> str:
        return self.body


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[httpx.AsyncClient, Hooks]]:
    app = create_app(Settings(callback_delay_seconds=0.0, mongo_db="", smtp_port=0))
    hooks = Hooks()
    async with app.router.lifespan_context(app):
        await app.state.twilio_http.close()
        app.state.twilio_http = hooks
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sb") as client:
            yield client, hooks


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_message_accepted_and_callbacks_signed_as_twilio_signs(
    sandbox: tuple[httpx.AsyncClient, Hooks],
) -> None:
    client, hooks = sandbox
    cb = "https://sender.example/webhooks/twilio/status?x=1"
    r = await client.post(
        MSGS,
        data={"To": "+12015550100", "From": "+15005550006", "Body": "hi", "StatusCallback": cb},
        headers=AUTH,
    )
    assert r.status_code == 201
    sid = r.json()["sid"]
    assert sid.startswith("SM") and r.json()["status"] == "queued"
    await settle()
    assert [p["MessageStatus"] for _, p, _ in hooks.calls] == ["sent", "delivered"]
    validator = RequestValidator(TOKEN)
    for url, params, signature in hooks.calls:
        assert url == cb
        assert params["MessageSid"] == sid
        assert validator.validate(url, params, signature)
        assert not validator.validate(url, {**params, "MessageStatus": "failed"}, signature)


async def test_errors_have_twilio_shape(sandbox: tuple[httpx.AsyncClient, Hooks]) -> None:
    client, _ = sandbox
    r = await client.post(MSGS, data={"To": "+12015550100", "From": "+1500", "Body": "x"})
    assert r.status_code == 401 and r.json()["code"] == 20003
    r = await client.post(
        MSGS, data={"To": "12", "From": "+15005550006", "Body": "x"}, headers=AUTH
    )
    assert r.status_code == 400 and r.json()["code"] == 21211
    assert r.json()["more_info"].endswith("/21211")


async def test_rate_limit_per_number_answers_429_20429_with_retry_after(
    sandbox: tuple[httpx.AsyncClient, Hooks],
) -> None:
    client, _ = sandbox
    await client.post("/sandbox/api/twilio/behaviour", json={"rate_per_number": 2, "burst": 2})
    codes = []
    for _ in range(4):
        r = await client.post(
            MSGS, data={"To": "+12015550100", "From": "+15005550006", "Body": "x"}, headers=AUTH
        )
        codes.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["code"] == 20429
            assert int(r.headers["Retry-After"]) >= 1
    assert codes[:2] == [201, 201] and 429 in codes[2:]
    # Another sending number has its own allowance.
    r = await client.post(
        MSGS, data={"To": "+12015550100", "From": "+15005550007", "Body": "x"}, headers=AUTH
    )
    assert r.status_code == 201
    assert (await client.get("/sandbox/api/twilio/behaviour")).json()["rejected_429"] >= 1


async def test_fault_rules_inject_server_errors_and_undelivered(
    sandbox: tuple[httpx.AsyncClient, Hooks],
) -> None:
    client, hooks = sandbox
    await client.post(
        "/sandbox/api/twilio/behaviour",
        json={"faults": [{"kind": "server-error", "share": 1.0}]},
    )
    r = await client.post(
        MSGS, data={"To": "+12015550100", "From": "+15005550006", "Body": "x"}, headers=AUTH
    )
    assert r.status_code == 500 and r.json()["code"] == 20500
    # A chaos run reads how many faults it really got.
    behaviour = (await client.get("/sandbox/api/twilio/behaviour")).json()
    assert behaviour["injected"] == {"server-error": 1}
    await client.post(
        "/sandbox/api/twilio/behaviour", json={"faults": [{"kind": "undelivered", "share": 1.0}]}
    )
    # New rules start the counts afresh.
    assert (await client.get("/sandbox/api/twilio/behaviour")).json()["injected"] == {}
    r = await client.post(
        MSGS,
        data={
            "To": "+12015550100",
            "From": "+15005550006",
            "Body": "x",
            "StatusCallback": "http://h/s",
        },
        headers=AUTH,
    )
    assert r.status_code == 201
    await settle()
    final = hooks.calls[-1][1]
    assert final["MessageStatus"] == "undelivered" and final["ErrorCode"] == "30003"
    assert (await client.get("/sandbox/api/twilio/behaviour")).json()["injected"] == {
        "undelivered": 1
    }


async def test_stop_from_customer_blocks_later_messages_with_21610(
    sandbox: tuple[httpx.AsyncClient, Hooks],
) -> None:
    client, hooks = sandbox
    r = await client.post(
        "/sandbox/api/twilio/inbound-sms",
        json={"from": "+12015550111", "to": "+15005550006", "body": "stop", "url": "http://h/in"},
    )
    assert r.json()["status"] == 200
    url, params, signature = hooks.calls[-1]
    assert params["Body"] == "stop" and RequestValidator(TOKEN).validate(url, params, signature)
    r = await client.post(
        MSGS, data={"To": "+12015550111", "From": "+15005550006", "Body": "x"}, headers=AUTH
    )
    assert r.status_code == 400 and r.json()["code"] == 21610
    # With Twilio's blocking switched off the sandbox takes it: senders must stop by themselves.
    r = await client.post("/sandbox/api/twilio/behaviour", json={"enforce_opt_out": False})
    assert r.json()["enforce_opt_out"] is False
    r = await client.post(
        MSGS, data={"To": "+12015550111", "From": "+15005550006", "Body": "x"}, headers=AUTH
    )
    assert r.status_code == 201


async def test_call_runs_twiml_and_keypad_posts_to_gather_action(
    sandbox: tuple[httpx.AsyncClient, Hooks],
) -> None:
    client, hooks = sandbox
    hooks.twiml["/voice"] = (
        '<Response><Gather action="/gather" numDigits="1"><Say>Press 1</Say></Gather></Response>'
    )
    hooks.twiml["/gather"] = "<Response><Dial>+15005550009</Dial></Response>"
    r = await client.post(
        CALLS,
        data={
            "To": "+12015550122",
            "From": "+15005550006",
            "Url": "http://app/voice",
            "StatusCallback": "http://app/status",
            "MachineDetection": "Enable",
        },
        headers=AUTH,
    )
    assert r.status_code == 201
    sid = r.json()["sid"]
    await settle()
    voice = hooks.calls[-1][1]
    assert voice["CallSid"] == sid and voice["AnsweredBy"] == "human"
    r = await client.post(f"/sandbox/api/calls/{sid}/keypad", json={"digits": "2"})
    assert "<Dial>" in r.json()["twiml"]
    assert [u for u, _, _ in hooks.calls][-2:] == ["http://app/gather", "http://app/status"]
    assert hooks.calls[-2][1]["Digits"] == "2"
    assert hooks.calls[-1][1]["CallStatus"] == "completed"
    listed = (await client.get("/sandbox/api/calls", params={"to": "+12015550122"})).json()
    assert listed["items"][0]["digits"] == ["2"]


async def test_busy_fault_reports_busy(sandbox: tuple[httpx.AsyncClient, Hooks]) -> None:
    client, hooks = sandbox
    await client.post(
        "/sandbox/api/twilio/behaviour", json={"faults": [{"kind": "busy", "share": 1.0}]}
    )
    r = await client.post(
        CALLS,
        data={
            "To": "+12015550123",
            "From": "+1500555",
            "Url": "http://app/v",
            "StatusCallback": "http://app/s",
        },
        headers=AUTH,
    )
    assert r.status_code == 201
    await settle()
    assert hooks.calls[-1][1]["CallStatus"] == "busy"


async def test_outbox_listing_reads_on_from_where_the_last_poll_stopped(
    sandbox: tuple[httpx.AsyncClient, Hooks],
) -> None:
    client, _ = sandbox
    for n, to in enumerate(["+12015550101", "+12015550102", "+12015550101"]):
        r = await client.post(
            MSGS, data={"To": to, "From": "+15005550006", "Body": f"m{n}"}, headers=AUTH
        )
        assert r.status_code == 201
    first = (await client.get("/sandbox/api/sms")).json()
    assert [m["body"] for m in first["items"]] == ["m0", "m1", "m2"] and first["next"] == 3
    r = await client.post(
        MSGS, data={"To": "+12015550101", "From": "+15005550006", "Body": "m3"}, headers=AUTH
    )
    newer = (await client.get("/sandbox/api/sms", params={"after": first["next"]})).json()
    assert [m["body"] for m in newer["items"]] == ["m3"] and newer["next"] == 4
    # A number's SMS from a point on: the filter applies to what is newer.
    one = (await client.get("/sandbox/api/sms", params={"after": 1, "to": "+12015550101"})).json()
    assert [m["body"] for m in one["items"]] == ["m2", "m3"]
    r = await client.get("/sandbox/api/sms", params={"after": -1})
    assert r.status_code == 422 and r.json()["field"] == "after"


async def test_callbacks_to_a_slow_receiver_queue_rather_than_drop() -> None:
    """A webhook host answering in a second, 600 callbacks due at once: each arrives once.

    (With 32 connections and a 10 s total timeout, the ones still queued for a connection
    after 10 s were dropped: a loaded SMS sender lost a third of its statuses.)
    """
    from aiohttp import web

    received: list[tuple[str, str]] = []

    async def slow(request: web.Request) -> web.Response:
        form = await request.post()
        await asyncio.sleep(1.0)
        received.append((str(form["MessageSid"]), str(form["MessageStatus"])))
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/status", slow)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    app = create_app(Settings(callback_delay_seconds=0.0, mongo_db="", smtp_port=0))
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://sb") as client:
                sids = set()
                for i in range(300):
                    r = await client.post(
                        MSGS,
                        data={
                            "To": f"+1201555{i:04d}",
                            "From": "+15005550006",
                            "Body": "hi",
                            "StatusCallback": f"http://127.0.0.1:{port}/status",
                        },
                        headers=AUTH,
                    )
                    assert r.status_code == 201
                    sids.add(r.json()["sid"])
                for _ in range(300):
                    if len(received) >= 600:
                        break
                    await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()
    assert sorted(received) == sorted((sid, s) for sid in sids for s in ("sent", "delivered"))


async def test_list_pages_carry_twilios_uris_and_bounds(
    sandbox: tuple[httpx.AsyncClient, Hooks],
) -> None:
    client, _ = sandbox
    for i in range(3):
        r = await client.post(
            MSGS, data={"To": "+12015550100", "From": "+15005550006", "Body": f"m{i}"}, headers=AUTH
        )
        assert r.status_code == 201
    page = (
        await client.get(MSGS, params={"To": "+12015550100", "PageSize": 2}, headers=AUTH)
    ).json()
    assert [m["body"] for m in page["messages"]] == ["m2", "m1"]
    assert (page["page"], page["page_size"], page["start"], page["end"]) == (0, 2, 0, 1)
    assert page["first_page_uri"] == f"{MSGS}?To=%2B12015550100&PageSize=2&Page=0"
    assert page["previous_page_uri"] is None
    nxt = page["next_page_uri"]
    assert nxt.startswith(f"{MSGS}?To=%2B12015550100&PageSize=2&Page=1&PageToken=PASM")
    last = (await client.get(nxt, headers=AUTH)).json()
    assert [m["body"] for m in last["messages"]] == ["m0"]
    assert (last["page"], last["start"], last["end"], last["next_page_uri"]) == (1, 2, 2, None)
    # Twilio's bounds: at most 1000 a page; a page size below 1 is refused, naming the field.
    big = (await client.get(MSGS, params={"PageSize": 5000}, headers=AUTH)).json()
    assert big["page_size"] == 1000
    r = await client.get(MSGS, params={"PageSize": 0}, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "PageSize"
