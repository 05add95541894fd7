"""The status page without its infrastructure: links when no link secret is configured, and
what the page takes as an answer (its own forms, numbers a call-back may dial)."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Any

import httpx
import pytest

from herald_contracts import CaseState, EngagementReply, utc_now
from herald_ingest.app import create_app
from herald_ingest.config import Settings
from herald_kit import ApiKeyEntry, LinkSigner, hash_key


async def test_without_a_link_secret_links_answer_503_problem_not_500() -> None:
    # An unset setting is the operator's to fix, and retrying later may succeed: 503, as the
    # preference centre answers, rather than an unexpected-error 500.
    settings = Settings(
        api_keys=[ApiKeyEntry(name="ops", hash=hash_key("k"), scopes=["cases:read"])]
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for r in (
            await c.get("/s/eyJjYXNlIjoiYzEifQ.aaaa.bbbb"),
            await c.post("/s/eyJjYXNlIjoiYzEifQ.aaaa.bbbb/reply", content=b"intent=confirm"),
        ):
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert "link secret" in r.json()["detail"]


SECRET = "s3cret"


class Cases:
    """One open case of customer c1, and the call-backs counted (as CaseRepository does)."""

    def __init__(self) -> None:
        self.callbacks: dict[tuple[str, date], list[str]] = {}

    async def get(self, case_id: str) -> CaseState:
        return CaseState(
            case_id=case_id, version=1, customer_ids=["c1"], status="open", updated_at=utc_now()
        )

    async def customer_timeline(self, case_id: str, customer_id: str) -> list[Any]:
        return []

    async def take_callback(
        self, link: str, day: date, reply_id: str, *, cap: int, now: datetime
    ) -> bool:
        taken = self.callbacks.setdefault((link, day), [])
        if reply_id not in taken:
            if len(taken) >= cap:
                return False
            taken.append(reply_id)
        return True


class Published:
    """Stands in for the producer: the replies the page published."""

    def __init__(self) -> None:
        self.replies: list[EngagementReply] = []

    async def publish(self, topic: object, event: EngagementReply, **kw: Any) -> None:
        assert kw["event_id"] == event.reply_id
        self.replies.append(event)


@pytest.fixture
async def page() -> AsyncIterator[tuple[httpx.AsyncClient, Published]]:
    """The status page of an app with a case and a producer standing in for the real ones."""
    app = create_app(Settings(link_secret=SECRET))
    app.state.repo = Cases()
    published = Published()
    app.state.runtime.producer = published
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client, published


def _token(locale: str = "en-GB") -> str:
    claims = {"case": "k1", "customer": "c1", "locale": locale, "tz": "UTC"}
    return LinkSigner(SECRET, "case-status").sign(claims)


async def _form(client: httpx.AsyncClient, token: str) -> str:
    """The submission value of the page's forms, as a browser viewing the page holds it."""
    r = await client.get(f"/s/{token}")
    assert r.status_code == 200, r.text
    found = re.search(r'name="submission" value="([^"]+)"', r.text)
    assert found, r.text
    return found.group(1)


async def _post(
    client: httpx.AsyncClient, token: str, body: str, *, html: bool = False
) -> httpx.Response:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if html:
        headers["accept"] = "text/html"
    return await client.post(f"/s/{token}/reply", content=body.encode(), headers=headers)


async def test_an_answer_is_taken_only_from_a_form_the_page_issued(
    page: tuple[httpx.AsyncClient, Published],
) -> None:
    """The page took any 32 hex digits as the form's value: whoever held a link could post
    call-back after call-back, each with a value of their own and so a new reply (each a call
    placed), from a script or another site, without ever fetching the page."""
    client, published = page
    token = _token()
    other_link = await _form(client, _token("en-US"))  # genuine, for another link's page
    nonce, mac = (await _form(client, token)).split(".")
    made_up = [
        "",
        secrets.token_hex(16),
        f"{secrets.token_hex(16)}.{mac}",  # another nonce under a genuine value's HMAC
        f"{nonce}.{secrets.token_hex(32)}",
        other_link,
    ]
    for n, submission in enumerate(made_up * 10):
        r = await _post(
            client,
            token,
            f"intent=callback&submission={submission}&callback_number=%2B447911{n:06d}",
        )
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "submission"
    r = await _post(client, token, f"intent=confirm&submission={made_up[1]}", html=True)
    assert r.status_code == 422
    assert "Please open the page again and retry." in r.text
    assert r.headers["x-frame-options"] == "DENY"
    assert published.replies == []

    # The page's own form is taken, once however often it is sent.
    form = await _form(client, token)
    for _ in range(2):
        r = await _post(
            client, token, f"intent=callback&submission={form}&callback_number=07911123456"
        )
        assert r.status_code == 303, r.text
    assert len({x.reply_id for x in published.replies}) == 1
    assert published.replies[0].callback_number == "+447911123456"


@pytest.mark.parametrize(
    "number",
    [
        "09098790000",  # premium rate
        "08451234567",  # premium rate (the service charge of 084)
        "05511000000",  # UAN
        "07011000000",  # personal (forwarded anywhere)
        "07640000000",  # pager
        "08001111111",  # toll free
        "+19005551234",  # premium rate, another country
        "+864001234567",  # shared cost
    ],
)
async def test_a_call_back_is_never_placed_to_a_special_number(
    page: tuple[httpx.AsyncClient, Published], number: str
) -> None:
    """Any valid number was taken: premium-rate and other special numbers too, which a link's
    holder could have Herald call for their own profit."""
    client, published = page
    token = _token()
    body = f"intent=callback&submission={await _form(client, token)}&callback_number={number}"
    r = await _post(client, token, body.replace("+", "%2B"))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "callback_number"
    r = await _post(client, token, body.replace("+", "%2B"), html=True)
    assert r.status_code == 422
    assert "Please give a mobile or landline number" in r.text
    assert published.replies == []


async def test_a_special_number_is_refused_in_the_customers_language(
    page: tuple[httpx.AsyncClient, Published],
) -> None:
    client, published = page
    token = _token("zh-CN")
    body = (
        f"intent=callback&submission={await _form(client, token)}&callback_number=%2B864001234567"
    )
    r = await _post(client, token, body, html=True)
    assert r.status_code == 422
    assert "请填写手机或固定电话号码" in r.text
    assert 'value="+864001234567"' in r.text  # as typed, to correct
    assert published.replies == []


@pytest.mark.parametrize(
    ("number", "called"),
    [
        ("07911123456", "+447911123456"),  # mobile
        ("020 7946 0018", "+442079460018"),  # fixed line
        ("05612345678", "+445612345678"),  # VoIP
        ("+1 201 555 0123", "+12015550123"),  # fixed line or mobile
        ("+86 138 0013 8000", "+8613800138000"),  # mobile, another country
    ],
)
async def test_a_call_back_is_placed_to_a_mobile_landline_or_voip_number(
    page: tuple[httpx.AsyncClient, Published], number: str, called: str
) -> None:
    client, published = page
    token = _token()
    form = await _form(client, token)
    typed = number.replace("+", "%2B").replace(" ", "+")
    r = await _post(client, token, f"intent=callback&submission={form}&callback_number={typed}")
    assert r.status_code == 303, r.text
    [reply] = published.replies
    assert reply.callback_number == called
