"""The customer status page in a real browser: signed link, latest state, timeline, buttons."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from itsdangerous import TimestampSigner

from herald_contracts import (
    DELIVERY_STATUS,
    ENGAGEMENT_REPLY,
    DeliveryStatus,
    EngagementReply,
    Topics,
)
from herald_ingest.app import create_app
from herald_kit import LinkSigner, decode, encode
from support import (
    TEST_KEY,
    case_event,
    eventually,
    free_port,
    ingest_settings,
    read_topic,
    running,
    wait_ready,
)

SECRET = "status-page-test-secret"


class Served:
    """An ingest app behind a real HTTP server, so a browser can reach it."""

    def __init__(self, base: str, client: httpx.AsyncClient, namespace: str) -> None:
        self.base = base
        self.client = client
        self.namespace = namespace


@pytest.fixture
async def served(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> AsyncIterator[Served]:
    port = free_port()
    settings = ingest_settings(
        infra, namespace, db_name("ingest"), host="127.0.0.1", port=port, link_secret=SECRET
    )
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        access_log=False,  # as in production: paths carry customers' tokens
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {TEST_KEY}"}
        ) as client:
            await eventually(lambda: server.started, within=30)
            await wait_ready(client)
            yield Served(base, client, namespace)
    finally:
        server.should_exit = True
        await task


async def _open_case(s: Served, case_id: str) -> None:
    r = await s.client.post(
        "/v1/events",
        json=[
            {
                "specversion": "1.0",
                "id": f"{case_id}-1",
                "source": "/crm",
                "type": "case.opened",
                "time": "2026-11-24T09:00:00Z",
                "data": {"case_id": case_id, "customer_ids": ["c1"], "summary": "No hot water"},
            },
            {
                "specversion": "1.0",
                "id": f"{case_id}-2",
                "source": "/crm",
                "type": "appointment.booked",
                "time": "2026-11-24T09:05:00Z",
                "data": {
                    "case_id": case_id,
                    "status": "engineer booked",
                    "appointment": {"starts_at": "2026-11-25T14:00:00Z", "engineer": "Ada"},
                },
            },
        ],
    )
    assert r.json()["accepted"] == 2, r.text


async def _link(s: Served, case_id: str, locale: str) -> str:
    r = await s.client.post(
        f"/v1/cases/{case_id}/status-links", json={"customer_id": "c1", "locale": locale}
    )
    assert r.status_code == 200, r.text
    url: str = r.json()["url"]
    assert url.startswith(s.base + "/s/")
    return url


async def _customer_page(s: Served, browser: Any, locale: str) -> tuple[str, Any]:
    """A new case, and a browser page open on its status link in `locale`."""
    case_id = f"sp-{uuid.uuid4().hex[:8]}"
    await _open_case(s, case_id)
    page = await browser.new_page()
    await page.goto(await _link(s, case_id, locale))
    return case_id, page


async def _replies(infra: dict[str, str], s: Served, n: int = 1) -> list[Any]:
    return await read_topic(infra["kafka"], Topics.ENGAGEMENT_REPLIES.name(s.namespace), n)


async def _answer(
    s: Served, token: str, body: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """Post an answer as the page's form does: with the submission value of a fresh view."""
    html = (await s.client.get(f"/s/{token}")).text
    submission = re.search(r'name="submission" value="([^"]+)"', html)
    assert submission, html
    return await s.client.post(
        f"/s/{token}/reply",
        content=f"{body}&submission={submission.group(1)}".encode(),
        headers={"content-type": "application/x-www-form-urlencoded", **(headers or {})},
    )


async def test_customer_sees_state_in_english_and_confirms(
    served: Served, browser: Any, infra: dict[str, str]
) -> None:
    case_id, page = await _customer_page(served, browser, "en-GB")
    assert await page.text_content("#status") == "engineer booked"
    assert await page.text_content("#summary") == "No hot water"
    assert "Ada" in (await page.text_content("#appointment") or "")
    assert "25 Nov 2026" in (await page.text_content("#appointment") or "")
    assert await page.locator("#timeline li").count() == 2

    await page.click("#btn-confirm")
    await page.wait_for_selector("#done")
    assert "Thank you" in (await page.text_content("#done") or "")
    [record] = await _replies(infra, served)
    reply = decode(record, EngagementReply).data
    assert (reply.channel, reply.intent, reply.case_id, reply.customer_id) == (
        "web",
        "confirm",
        case_id,
        "c1",
    )

    # The answer comes back through engagement.replies.v1 into the case's own timeline.
    async def answer_shown() -> bool:
        await page.reload()
        return bool(await page.locator("#timeline li.reply").count())

    await eventually(answer_shown, within=20, interval=0.5)


async def test_customer_sees_the_page_in_chinese(served: Served, browser: Any) -> None:
    _, page = await _customer_page(served, browser, "zh-CN")
    assert await page.get_attribute("html", "lang") == "zh-CN"
    assert "您的服务单" in (await page.text_content("h1") or "")
    assert "2026年11月25日" in (await page.text_content("#appointment") or "")
    assert await page.text_content("#btn-callback") == "请给我回电"


async def test_times_are_written_in_the_customers_zone_and_name_it(served: Served) -> None:
    """The page wrote times in UTC without saying so: a customer in Shanghai read the 22:00
    appointment as 14:00."""
    case_id = f"sp-{uuid.uuid4().hex[:8]}"
    await _open_case(served, case_id)
    r = await served.client.post(
        f"/v1/cases/{case_id}/status-links",
        json={"customer_id": "c1", "locale": "zh-CN", "time_zone": "Asia/Shanghai"},
    )
    assert r.status_code == 200, r.text
    html = (await served.client.get(r.json()["url"])).text
    appointment = re.search(r'<dd id="appointment">([^\n]*)', html)
    assert appointment and "2026年11月25日 22:00:00 (Asia/Shanghai)" in appointment.group(1)

    # A link signed before links named a zone still shows UTC, and says so.
    old = LinkSigner(SECRET, "case-status").sign(
        {"case": case_id, "customer": "c1", "locale": "en-GB"}
    )
    html = (await served.client.get(f"/s/{old}")).text
    appointment = re.search(r'<dd id="appointment">([^\n]*)', html)
    assert appointment and "25 Nov 2026, 14:00:00 (UTC)" in appointment.group(1)

    r = await served.client.post(
        f"/v1/cases/{case_id}/status-links",
        json={"customer_id": "c1", "time_zone": "Mars/Olympus_Mons"},
    )
    assert r.status_code == 422 and "time_zone" in r.text


async def test_the_page_and_its_answer_stay_under_a_proxys_path_prefix(
    served: Served,
) -> None:
    """Behind a proxy serving ingest under <public base>/ingest, root-relative links (the
    form's /s/<token>/reply, the redirect back) left the customer on pages that do not exist."""
    case_id = f"sp-{uuid.uuid4().hex[:8]}"
    await _open_case(served, case_id)
    token = urlsplit(await _link(served, case_id, "en-GB")).path.rsplit("/", 1)[1]
    page = f"https://herald.example.com/ingest/s/{token}"
    html = (await served.client.get(f"/s/{token}")).text
    actions = set(re.findall(r'action="([^"]+)"', html))
    assert actions and {urljoin(page, a) for a in actions} == {f"{page}/reply"}
    r = await _answer(served, token, "intent=confirm")
    assert r.status_code == 303
    assert urljoin(f"{page}/reply", r.headers["location"]) == f"{page}?done=confirm"


async def test_an_answer_the_broker_does_not_acknowledge_is_503_not_a_page_that_never_loads(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = ingest_settings(
        infra, namespace, db_name("ingest"), link_secret=SECRET, publish_wait_seconds=0.5
    )
    app = create_app(settings)
    async with running(app) as client:
        s = Served(settings.base_url(), client, namespace)
        case_id = f"sp-{uuid.uuid4().hex[:8]}"
        await _open_case(s, case_id)
        token = urlsplit(await _link(s, case_id, "en-GB")).path.rsplit("/", 1)[1]

        async def unacknowledged(*args: Any, **kwargs: Any) -> None:
            await asyncio.Event().wait()  # a broker that is away never answers

        monkeypatch.setattr(app.state.runtime.producer, "publish", unacknowledged)
        r = await asyncio.wait_for(_answer(s, token, "intent=confirm"), timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"]


async def test_expired_tampered_and_foreign_links_are_refused(served: Served) -> None:
    case_id = f"sp-{uuid.uuid4().hex[:8]}"
    await _open_case(served, case_id)
    url = await _link(served, case_id, "en")
    token = url.rsplit("/", 1)[1]
    tampered = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    r = await served.client.get(f"/s/{tampered}")
    assert r.status_code == 403 and r.json()["field"] == "token"
    r = await served.client.post(f"/s/{tampered}/reply", content=b"intent=confirm")
    assert r.status_code == 403

    other_purpose = LinkSigner(SECRET, "preferences").sign({"case": case_id, "customer": "c1"})
    assert (await served.client.get(f"/s/{other_purpose}")).status_code == 403

    signer = LinkSigner(SECRET, "case-status")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 10**8)
        old = signer.sign({"case": case_id, "customer": "c1"})
    r = await served.client.get(f"/s/{old}")
    assert r.status_code == 410 and r.headers["content-type"] == "application/problem+json"

    stranger = signer.sign({"case": case_id, "customer": "someone-else"})
    assert (await served.client.get(f"/s/{stranger}")).status_code == 404
    r = await _answer(served, token, "intent=launch")
    assert r.status_code == 422 and r.json()["field"] == "intent"


async def test_no_other_site_may_frame_the_page(served: Served) -> None:
    case_id = f"sp-{uuid.uuid4().hex[:8]}"
    await _open_case(served, case_id)
    token = (await _link(served, case_id, "en-GB")).rsplit("/", 1)[1]
    html = {"accept": "text/html"}
    bad = await _answer(served, token, "intent=callback&callback_number=12", headers=html)
    for r in (
        await served.client.get(f"/s/{token}"),
        await served.client.get(f"/s/{token[:-3]}xyz", headers=html),
        bad,
    ):
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"


async def test_a_browser_is_told_what_is_wrong_in_its_language(served: Served) -> None:
    """A browser was shown raw English problem+json for a refused link or answer."""
    case_id = f"sp-{uuid.uuid4().hex[:8]}"
    await _open_case(served, case_id)
    token = (await _link(served, case_id, "zh-CN")).rsplit("/", 1)[1]
    browser = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8", "accept-language": "zh-CN"}
    signer = LinkSigner(SECRET, "case-status")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 10**8)
        old = signer.sign({"case": case_id, "customer": "c1"})
    stranger = signer.sign({"case": case_id, "customer": "someone-else"})
    for path, status, text in (
        (f"/s/{token[:-3]}xyz", 403, "此链接无效。"),
        (f"/s/{old}", 410, "此链接已过期"),
        (f"/s/{stranger}", 404, "此链接没有可显示的内容"),
    ):
        r = await served.client.get(path, headers=browser)
        assert r.status_code == status, path
        assert r.headers["content-type"].startswith("text/html")
        assert text in r.text and '<html lang="zh-CN">' in r.text
        answer = f"intent=confirm&submission={uuid.uuid4().hex}".encode()
        r = await served.client.post(f"{path}/reply", content=answer, headers=browser)
        assert r.status_code == status and text in r.text
    r = await _answer(served, token, "intent=launch", headers=browser)
    assert r.status_code == 422 and "我们无法接收该回复" in r.text
    # An API client still gets problem+json.
    r = await served.client.get(f"/s/{stranger}")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


async def test_a_number_that_cannot_be_called_shows_the_page_again_with_it(
    served: Served, browser: Any, infra: dict[str, str]
) -> None:
    _, page = await _customer_page(served, browser, "en-GB")
    await page.fill("#callback-number", "020 79")
    await page.click("#btn-callback")
    await page.wait_for_selector("#error")
    assert await page.text_content("#error") == "Please give a phone number we can call."
    assert await page.input_value("#callback-number") == "020 79"  # to correct, not retype
    assert await page.text_content("#status") == "engineer booked"
    assert page.url.endswith("/reply")
    # Corrected from the same page: the answer is taken, and the page is the case's again.
    await page.fill("#callback-number", "020 7946 0018")
    await page.click("#btn-callback")
    await page.wait_for_selector("#done")
    assert page.url.endswith("?done=callback") and "/reply" not in page.url
    await page.close()
    [record] = await _replies(infra, served)
    assert decode(record, EngagementReply).data.callback_number == "+442079460018"


async def test_customer_asks_for_a_call_back_on_the_number_they_type(
    served: Served, browser: Any, infra: dict[str, str]
) -> None:
    case_id, page = await _customer_page(served, browser, "en-GB")
    # A national number is read in the region of the link's locale (GB).
    await page.fill("#callback-number", "020 7946 0018")
    await page.click("#btn-callback")
    await page.wait_for_selector("#done")
    [record] = await _replies(infra, served)
    reply = decode(record, EngagementReply).data
    assert (reply.intent, reply.case_id, reply.callback_number) == (
        "callback",
        case_id,
        "+442079460018",
    )
    assert reply.locale == "en-GB"  # the call-back speaks the page's language


async def test_a_call_back_without_a_callable_number_is_refused(served: Served) -> None:
    case_id = f"sp-{uuid.uuid4().hex[:8]}"
    await _open_case(served, case_id)
    url = await _link(served, case_id, "en-GB")
    token = url.rsplit("/s/", 1)[1]
    r = await _answer(served, token, "intent=callback&callback_number=12")
    assert r.status_code == 422, r.text
    assert "callback_number" in r.text


async def test_each_answer_on_the_page_is_a_new_answer_and_a_double_submit_is_one(
    served: Served, browser: Any, infra: dict[str, str]
) -> None:
    """The reply id once came from the link and intent alone: a corrected call-back number, or
    confirm after reschedule, was published under an earlier answer's id and dropped."""
    case_id, page = await _customer_page(served, browser, "en-GB")
    token = urlsplit(page.url).path.rsplit("/", 1)[1]
    await page.fill("#callback-number", "020 7946 0018")
    await page.click("#btn-callback")
    await page.wait_for_selector("#done")
    await page.fill("#callback-number", "020 7946 0019")  # a corrected number
    await page.click("#btn-callback")
    await page.wait_for_url("**?done=callback")
    for intent in ("reschedule", "confirm"):
        await page.click(f"#btn-{intent}")
        await page.wait_for_url(f"**?done={intent}")
    await page.close()
    # One form submitted twice (a double click, a resent request): the same answer.
    html = (await served.client.get(f"/s/{token}")).text
    form = re.search(r'name="submission" value="([^"]+)"', html)
    assert form
    for _ in range(2):
        r = await served.client.post(
            f"/s/{token}/reply",
            content=f"intent=confirm&submission={form.group(1)}".encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 303, r.text
    records = await _replies(infra, served, 6)
    replies = [decode(r, EngagementReply).data for r in records]
    assert [(x.intent, x.callback_number) for x in replies] == [
        ("callback", "+442079460018"),
        ("callback", "+442079460019"),
        ("reschedule", None),
        ("confirm", None),
        ("confirm", None),
        ("confirm", None),
    ]
    ids = [x.reply_id for x in replies]
    assert len(set(ids[:5])) == 5 and ids[5] == ids[4]
    assert {x.case_id for x in replies} == {case_id}

    # Without the form's value (or with a made-up one) nothing is published.
    for extra in ("", "&submission=not-one-of-ours"):
        r = await served.client.post(
            f"/s/{token}/reply",
            content=f"intent=confirm{extra}".encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 422 and r.json()["field"] == "submission"


async def test_an_answer_on_a_link_from_a_message_names_that_message_and_its_campaign(
    served: Served, infra: dict[str, str]
) -> None:
    """The dispatcher's link names the message it was sent in and the campaign: the answer is
    counted in that campaign's stats, and a call-back asked for there is reported for it."""
    case_id = f"sp-{uuid.uuid4().hex[:8]}"
    await _open_case(served, case_id)
    claims = {"case": case_id, "customer": "c1", "locale": "en-GB", "msg": "m-1", "cmp": "camp-1"}
    token = LinkSigner(SECRET, "case-status").sign(claims)
    r = await _answer(served, token, "intent=confirm")
    assert r.status_code == 303, r.text
    [record] = await _replies(infra, served)
    reply = decode(record, EngagementReply).data
    assert (reply.intent, reply.message_id, reply.campaign_id) == ("confirm", "m-1", "camp-1")


async def test_a_shared_case_shows_each_customer_only_their_own_contacts_and_replies(
    served: Served, infra: dict[str, str]
) -> None:
    case_id = f"sp-{uuid.uuid4().hex[:8]}"
    opened = case_event(
        case_id,
        f"{case_id}-1",
        type_="case.opened",
        customer_ids=["alice", "bob"],
        time="2026-11-24T09:00:00Z",
    )
    r = await served.client.post("/v1/events", json=opened)
    assert r.status_code == 202, r.text
    at = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    sent: list[tuple[Any, Any]] = []
    for customer, channel, intent in (("alice", "sms", "confirm"), ("bob", "email", "callback")):
        sent.append(
            (
                DELIVERY_STATUS,
                DeliveryStatus(
                    message_id=f"m-{customer}",
                    request_id=f"r-{customer}",
                    campaign_id="outage",
                    customer_id=customer,
                    case_id=case_id,
                    channel=channel,
                    status="delivered",
                    at=at,
                ),
            )
        )
        sent.append(
            (
                ENGAGEMENT_REPLY,
                EngagementReply(
                    reply_id=f"rep-{customer}",
                    customer_id=customer,
                    channel=channel,
                    intent=intent,
                    case_id=case_id,
                    at=at,
                ),
            )
        )
    producer = AIOKafkaProducer(bootstrap_servers=infra["kafka"])
    await producer.start()
    try:
        for et, body in sent:
            headers, value = encode(et, body, source="/test", event_id=uuid.uuid4().hex)
            await producer.send_and_wait(
                et.topic.name(served.namespace),
                value,
                key=body.customer_id.encode(),
                headers=headers,
            )
    finally:
        await producer.stop()

    async def all_recorded() -> bool:
        items = (await served.client.get(f"/v1/cases/{case_id}/timeline")).json()["items"]
        return len(items) == 5  # the event, two contacts, two replies

    await eventually(all_recorded, within=20, interval=0.3)
    token = LinkSigner(SECRET, "case-status").sign(
        {"case": case_id, "customer": "alice", "locale": "en"}
    )
    r = await served.client.get(f"/s/{token}")
    assert r.status_code == 200, r.text
    page = r.text
    assert "We contacted you by text message (delivered)" in page
    assert "Your answer: confirmed by text message" in page
    assert "by email" not in page  # bob's contact and answer are his, not alice's
    assert "asked for a call back" not in page
    assert page.count('<li class="contact"') == 1 and page.count('<li class="reply"') == 1


async def _submission(s: Served, token: str) -> str:
    """The submission value of a fresh view of the page's forms."""
    html = (await s.client.get(f"/s/{token}")).text
    found = re.search(r'name="submission" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def _call_back(
    client: httpx.AsyncClient, token: str, submission: str, number: str, *, html: bool = False
) -> httpx.Response:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if html:
        headers["accept"] = "text/html"
    body = f"intent=callback&submission={submission}&callback_number={number.replace(' ', '+')}"
    return await client.post(f"/s/{token}/reply", content=body.encode(), headers=headers)


async def test_one_link_asks_for_a_few_call_backs_a_day_however_many_forms_it_sends(
    served: Served, infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> None:
    """Each call-back is a call Herald places, and a link's holder could ask for one after
    another, each from a fresh view of the page: now a link asks for 3 a day at most, counted
    in the database for every replica of the service."""
    case_id = f"sp-{uuid.uuid4().hex[:8]}"
    await _open_case(served, case_id)
    token = (await _link(served, case_id, "en-GB")).rsplit("/", 1)[1]
    first = await _submission(served, token)
    r = await _call_back(served.client, token, first, "07911 123450")
    assert r.status_code == 303, r.text
    for n in (1, 2):
        r = await _call_back(
            served.client, token, await _submission(served, token), f"0791112345{n}"
        )
        assert r.status_code == 303, r.text
    # A form sent again is the answer it was, not one more.
    r = await _call_back(served.client, token, first, "07911 123450")
    assert r.status_code == 303, r.text

    # The fourth is refused: an API client with problem+json, a browser with the page again.
    r = await _call_back(served.client, token, await _submission(served, token), "07911123453")
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == "intent"
    r = await _call_back(
        served.client, token, await _submission(served, token), "07911 123453", html=True
    )
    assert r.status_code == 429
    assert "as many times as we can take today" in r.text
    assert 'value="07911 123453"' in r.text
    assert r.headers["x-frame-options"] == "DENY"
    # Another replica of the service (or this one restarted) counts the same.
    settings = ingest_settings(infra, namespace, db_name("ingest"), link_secret=SECRET)
    async with running(create_app(settings)) as other:
        html = (await other.get(f"/s/{token}")).text
        found = re.search(r'name="submission" value="([^"]+)"', html)
        assert found
        r = await _call_back(other, token, found.group(1), "07911123454")
        assert r.status_code == 429, r.text
    # Other answers are still taken, and the first call-back's form still is.
    assert (await _answer(served, token, "intent=confirm")).status_code == 303
    r = await _call_back(served.client, token, first, "07911 123450")
    assert r.status_code == 303, r.text

    records = await _replies(infra, served, 6)
    replies = [decode(x, EngagementReply).data for x in records]
    called = {x.reply_id: x.callback_number for x in replies if x.intent == "callback"}
    assert sorted(called.values()) == ["+447911123450", "+447911123451", "+447911123452"]


async def test_call_backs_asked_for_at_once_are_capped_all_the_same(served: Served) -> None:
    """Requests that arrive together must not each read that the link has asked for none."""
    case_id = f"sp-{uuid.uuid4().hex[:8]}"
    await _open_case(served, case_id)
    token = (await _link(served, case_id, "en-GB")).rsplit("/", 1)[1]
    forms = [await _submission(served, token) for _ in range(8)]
    answers = await asyncio.gather(
        *(_call_back(served.client, token, form, f"0791112346{n}") for n, form in enumerate(forms))
    )
    assert sorted(r.status_code for r in answers) == [303] * 3 + [429] * 5
    # Another link (a later message's) asks for its own.
    other = (await _link(served, case_id, "en-US")).rsplit("/", 1)[1]
    form = await _submission(served, other)
    r = await _call_back(served.client, other, form, "%2B44 7911 123469")
    assert r.status_code == 303, r.text
