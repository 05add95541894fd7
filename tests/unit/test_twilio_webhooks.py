"""Twilio webhook signatures: what the SMS and voice senders accept as signed by Twilio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI, Request
from twilio.request_validator import RequestValidator

from herald_kit._problems import install_problem_handlers
from herald_twilio import validate_signed_form

TOKEN = "t" * 32
PUBLIC = "https://herald.example.com"
PATH = "/webhooks/twilio/status?mid=m-1"
FIELDS = {
    "MessageSid": "SM" + "1" * 32,
    "MessageStatus": "delivered",
    "To": "+12015550100",
    "Body": "Yes, 2 pm + Straße",  # a space, a plus and a non-ASCII letter
    "ErrorCode": "",
}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/webhooks/twilio/status")
    async def status(request: Request) -> dict[str, str]:
        form = await validate_signed_form(request, public_base=PUBLIC, auth_token=TOKEN)
        return {k: str(v) for k, v in form.multi_items()}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://10.0.0.7:8104") as c:
        yield c


def _post(client: httpx.AsyncClient, fields: dict[str, str], signature: str) -> object:
    return client.post(
        PATH,
        content=urlencode(fields),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        },
    )


async def test_a_callback_signed_for_the_public_url_gives_its_fields(
    client: httpx.AsyncClient,
) -> None:
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + PATH, FIELDS)
    r = await _post(client, FIELDS, signature)  # type: ignore[misc]
    assert r.status_code == 200, r.text
    assert r.json() == FIELDS


async def test_a_signature_over_the_url_with_its_default_port_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    # Twilio signs some requests with the port written out; twilio-python accepts both forms.
    with_port = "https://herald.example.com:443" + PATH
    signature = RequestValidator(TOKEN).compute_signature(with_port, FIELDS)
    r = await _post(client, FIELDS, signature)  # type: ignore[misc]
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "case",
    ["missing", "tampered field", "added field", "other url", "other token"],
)
async def test_an_unsigned_or_tampered_callback_is_refused_with_403(
    client: httpx.AsyncClient, case: str
) -> None:
    fields = dict(FIELDS)
    url, token = PUBLIC + PATH, TOKEN
    if case == "other url":
        url = PUBLIC + "/webhooks/twilio/status?mid=m-2"
    if case == "other token":
        token = "u" * 32
    signature = "" if case == "missing" else RequestValidator(token).compute_signature(url, fields)
    if case == "tampered field":
        fields["MessageStatus"] = "failed"
    if case == "added field":
        fields["Extra"] = "1"
    r = await _post(client, fields, signature)  # type: ignore[misc]
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == "X-Twilio-Signature"


async def test_a_body_that_is_not_a_utf8_form_is_refused_with_400(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        PATH,
        content=b"Body=\xff\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"},
    )
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = await client.post(PATH, json=FIELDS, headers={"X-Twilio-Signature": "x"})
    assert r.status_code == 400 and r.json()["field"] == "body"


async def test_without_an_auth_token_even_a_request_signed_with_the_empty_key_is_refused() -> None:
    # The senders' default token is empty: an HMAC with an empty key is anyone's to compute.
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/webhooks/twilio/status")
    async def status(request: Request) -> dict[str, str]:
        form = await validate_signed_form(request, public_base=PUBLIC, auth_token="")
        return {k: str(v) for k, v in form.multi_items()}

    forged = RequestValidator("").compute_signature(PUBLIC + PATH, FIELDS)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://10.0.0.7:8104") as c:
        r = await _post(c, FIELDS, forged)  # type: ignore[misc]
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == "X-Twilio-Signature"
