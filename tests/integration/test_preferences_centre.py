"""The preference centre in a real browser (headless Chromium) against the real service."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from unittest import mock
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer

from herald_contracts import ENGAGEMENT_REPLY, EngagementReply, Topics, utc_now
from herald_kit import LinkSigner, encode
from herald_preferences.app import create_app
from herald_preferences.config import Settings
from support import TEST_KEY, api_keys, eventually, free_port, unique_phone, wait_ready

SECRET = "centre-test-secret"


@pytest.fixture
async def service(
    infra: dict[str, str], namespace: str, db_name: Callable[[str], str]
) -> AsyncIterator[httpx.AsyncClient]:
    """The preferences service listening on a real port, and an API client to it."""
    port = free_port()
    settings = Settings(
        kafka_bootstrap=infra["kafka"],
        mongo_uri=infra["mongo"],
        mongo_db=db_name("preferences"),
        topic_namespace=namespace,
        api_keys=api_keys(),
        link_secret=SECRET,
        port=port,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TEST_KEY}"},
            timeout=10,
        ) as client:
            await wait_ready(client)
            yield client
    finally:
        server.should_exit = True
        await task


async def _contact(api: httpx.AsyncClient, **over: Any) -> str:
    cid = f"cust-{uuid.uuid4().hex[:8]}"
    body = {
        "customer_id": cid,
        "channels": {"sms": unique_phone(), "email": "ada@example.com", "voice": unique_phone()},
        "ranking": ["sms", "email"],
        "consents": {"service-updates": {"sms": True, "email": True}},
        "locale": "en-GB",
        "time_zone": "Europe/London",
        **over,
    }
    r = await api.post("/v1/contacts", json=body)
    assert r.status_code == 201, r.text
    return cid


async def _text(
    api: httpx.AsyncClient, infra: dict[str, str], namespace: str, cid: str, word: str
) -> None:
    """The customer texts STOP or START; returns once the service has applied it."""
    reply = EngagementReply(
        reply_id=f"r-{uuid.uuid4().hex[:8]}",
        customer_id=cid,
        channel="sms",
        intent=word.lower(),
        text=word,
        at=utc_now(),
    )
    producer = AIOKafkaProducer(bootstrap_servers=infra["kafka"])
    await producer.start()
    try:
        headers, value = encode(ENGAGEMENT_REPLY, reply, source="test")
        await producer.send_and_wait(
            Topics.ENGAGEMENT_REPLIES.name(namespace), value, key=cid.encode(), headers=headers
        )
    finally:
        await producer.stop()
    want = ["sms"] if word == "STOP" else []

    async def applied() -> bool:
        history = (await api.get(f"/v1/contacts/{cid}/consents")).json()
        return bool(history["stopped_channels"] == want)

    await eventually(applied, within=20, interval=0.3)


async def _link(api: httpx.AsyncClient, cid: str) -> str:
    r = await api.post(f"/v1/contacts/{cid}/preference-link")
    assert r.status_code == 200, r.text
    url: str = r.json()["url"]
    return url


async def test_customer_changes_ranking_quiet_hours_and_topics_in_a_browser(
    service: httpx.AsyncClient, browser: Any
) -> None:
    cid = await _contact(service)
    page = await browser.new_page()
    try:
        await page.goto(await _link(service, cid))
        assert await page.title() == "Your contact preferences"
        assert await page.input_value("#rank-1") == "sms"
        await page.select_option("#rank-1", "email")
        await page.select_option("#rank-2", "voice")
        await page.select_option("#rank-3", "sms")
        await page.fill("#quiet-start", "21:30")
        await page.fill("#quiet-end", "07:45")
        await page.check("[id='consent:appointments:voice']")
        await page.uncheck("[id='consent:service-updates:email']")
        await page.click("#save")
        await page.wait_for_selector("#saved")
        # The page shows what is now stored.
        assert await page.input_value("#rank-1") == "email"
        assert await page.input_value("#quiet-start") == "21:30"
    finally:
        await page.close()

    got = (await service.get(f"/v1/contacts/{cid}")).json()
    assert got["ranking"] == ["email", "voice", "sms"]
    assert got["quiet_hours"] == {"start": "21:30", "end": "07:45"}
    assert got["consents"]["appointments"]["voice"] is True
    assert got["consents"]["service-updates"] == {"email": False, "sms": True, "voice": False}
    history = (await service.get(f"/v1/contacts/{cid}/consents")).json()
    centre = [e for e in history["entries"] if e["source"] == "preference-centre"]
    assert ("appointments", "voice", True) in [
        (e["topic"], e["channel"], e["granted"]) for e in centre
    ]
    assert {e["actor"] for e in centre} == {"customer"}


async def test_unticking_a_topic_outside_the_configured_ones_withdraws_it(
    service: httpx.AsyncClient, browser: Any
) -> None:
    # partner-offers is not among the configured topics; the page offers it because the
    # customer consented to it through the API.
    cid = await _contact(
        service,
        consents={"service-updates": {"email": True}, "partner-offers": {"email": True}},
    )
    page = await browser.new_page()
    try:
        await page.goto(await _link(service, cid))
        assert await page.is_checked("[id='consent:partner-offers:email']")
        await page.uncheck("[id='consent:partner-offers:email']")
        await page.click("#save")
        await page.wait_for_selector("#saved")
        assert not await page.is_checked("[id='consent:partner-offers:email']")
    finally:
        await page.close()
    got = (await service.get(f"/v1/contacts/{cid}")).json()
    assert got["consents"]["partner-offers"]["email"] is False
    assert got["consents"]["service-updates"]["email"] is True
    history = (await service.get(f"/v1/contacts/{cid}/consents")).json()
    assert ("partner-offers", "email", False, "customer") in [
        (e["topic"], e["channel"], e["granted"], e["actor"]) for e in history["entries"]
    ]


async def test_saving_while_stopped_keeps_what_a_later_start_restores(
    service: httpx.AsyncClient, browser: Any, infra: dict[str, str], namespace: str
) -> None:
    """A STOPped channel shows no ticked box (nothing is sent there); saving quiet hours then
    wrote every topic on it as the customer's withdrawal, so START restored nothing."""
    cid = await _contact(
        service,
        consents={
            "service-updates": {"sms": True, "email": True},
            "appointments": {"sms": True},
        },
    )
    await _text(service, infra, namespace, cid, "STOP")
    page = await browser.new_page()
    try:
        await page.goto(await _link(service, cid))
        assert "You replied STOP on Text message (SMS)" in await page.inner_text("body")
        assert not await page.is_checked("[id='consent:service-updates:sms']")
        assert await page.is_checked("[id='consent:service-updates:email']")
        await page.fill("#quiet-start", "21:00")
        await page.fill("#quiet-end", "08:00")
        await page.click("#save")
        await page.wait_for_selector("#saved")
        # Still honest: the channel is stopped and nothing is ticked on it.
        assert "You replied STOP" in await page.inner_text("body")
        assert not await page.is_checked("[id='consent:appointments:sms']")
    finally:
        await page.close()
    got = (await service.get(f"/v1/contacts/{cid}")).json()
    assert got["quiet_hours"] == {"start": "21:00", "end": "08:00"}
    assert got["consents"]["service-updates"] == {"email": True, "sms": False, "voice": False}

    await _text(service, infra, namespace, cid, "START")
    got = (await service.get(f"/v1/contacts/{cid}")).json()
    assert got["consents"]["service-updates"]["sms"] is True
    assert got["consents"]["appointments"]["sms"] is True
    history = (await service.get(f"/v1/contacts/{cid}/consents")).json()
    centre = [e for e in history["entries"] if e["source"] == "preference-centre"]
    assert not [e for e in centre if e["channel"] == "sms"]


async def test_the_page_speaks_the_customers_language(
    service: httpx.AsyncClient, browser: Any
) -> None:
    cid = await _contact(service, locale="zh-CN", time_zone="Asia/Shanghai")
    page = await browser.new_page()
    try:
        await page.goto(await _link(service, cid))
        assert await page.title() == "您的联系偏好"
        assert await page.get_attribute("html", "lang") == "zh-CN"
        assert "免打扰时段" in await page.inner_text("body")
        await page.select_option("#rank-1", "voice")
        await page.click("#save")
        await page.wait_for_selector("#saved")
        assert "您的偏好已保存" in await page.inner_text("#saved")
    finally:
        await page.close()
    assert (await service.get(f"/v1/contacts/{cid}")).json()["ranking"][0] == "voice"


async def test_bad_form_input_is_refused_and_changes_nothing(service: httpx.AsyncClient) -> None:
    cid = await _contact(service)
    url = await _link(service, cid)
    r = await service.post(
        url,
        content="rank-1=sms&rank-2=sms&quiet-start=&quiet-end=",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 422 and "twice" in r.text
    r = await service.post(
        url,
        content="rank-1=email&quiet-start=22:00&quiet-end=22:00",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 422 and "quiet_hours" in r.text
    assert (await service.get(f"/v1/contacts/{cid}")).json()["version"] == 1


async def test_a_save_sends_the_customer_back_to_their_page_behind_a_path_prefix_too(
    service: httpx.AsyncClient,
) -> None:
    """Behind a proxy that serves preferences under <public base>/preferences, a redirect to
    the root-relative /p/<token> left the customer on a page that does not exist."""
    cid = await _contact(service)
    path = urlsplit(await _link(service, cid)).path
    r = await service.post(
        path,
        content="rank-1=email&rank-2=sms&quiet-start=&quiet-end=",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 303, r.text
    proxied = "https://herald.example.com/preferences" + path
    assert urljoin(proxied, r.headers["location"]) == proxied + "?saved=1"
    assert urljoin(str(r.url), r.headers["location"]) == str(r.url) + "?saved=1"


async def test_no_other_site_may_frame_the_centre(service: httpx.AsyncClient) -> None:
    cid = await _contact(service)
    url = await _link(service, cid)
    token = url.rsplit("/p/", 1)[1]
    for r in (await service.get(url), await service.get(f"/p/{token[:-2]}xx")):
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"


async def test_a_link_for_an_erased_or_unknown_customer_says_there_is_nothing_to_show(
    service: httpx.AsyncClient,
) -> None:
    """Such a link answered 500, as if the service had failed."""
    cid = await _contact(service, locale="zh-CN")
    url = await _link(service, cid)
    r = await service.delete(f"/v1/contacts/{cid}")
    assert r.status_code in (200, 204), r.text
    unknown = LinkSigner(SECRET, "preferences").sign({"c": "nobody-at-all", "p": "preferences"})
    for path in (urlsplit(url).path, f"/p/{unknown}"):
        for r in (
            await service.get(path, headers={"accept-language": "zh-CN"}),
            await service.post(path, content="rank-1=sms", headers={"accept-language": "zh-CN"}),
        ):
            assert r.status_code == 404, path
            assert r.headers["content-type"].startswith("text/html")
            assert "此链接没有可显示的内容" in r.text


async def test_tampered_expired_or_foreign_links_are_refused(service: httpx.AsyncClient) -> None:
    cid = await _contact(service)
    url = await _link(service, cid)
    token = url.rsplit("/p/", 1)[1]
    r = await service.get(f"/p/{token[:-2]}xx")
    assert r.status_code == 403 and "not valid" in r.text
    # Signed for another purpose (the case status page) with the same secret.
    other = LinkSigner(SECRET, "case-status").sign({"c": cid, "p": "preferences"})
    assert (await service.get(f"/p/{other}")).status_code == 403
    # Genuine, but signed a year ago: older than the allowed age.
    real = time.time
    with mock.patch("itsdangerous.timed.time.time", lambda: real() - 365 * 24 * 3600):
        expired = LinkSigner(SECRET, "preferences").sign({"c": cid, "p": "preferences"})
    r = await service.get(f"/p/{expired}")
    assert r.status_code == 410 and "expired" in r.text
    assert (await service.get(f"/p/{token}")).status_code == 200
    # A POST with a bad link changes nothing.
    r = await service.post(f"/p/{token[:-2]}xx", content="rank-1=voice")
    assert r.status_code == 403
    assert (await service.get(f"/v1/contacts/{cid}")).json()["version"] == 1
