"""The unsubscribe confirmation page behind the chart's ingress, which serves the email-sender
under <publicBaseUrl>/email-sender and strips that prefix before the service sees the path."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from herald_email_sender.app import create_app
from herald_email_sender.config import Settings
from herald_kit import LinkSigner

BASE = "https://herald.example.com/email-sender"
PREFIX = "/email-sender"


class Published:
    """Stands in for the producer: what the service published."""

    def __init__(self) -> None:
        self.events: list[tuple[str | None, Any]] = []

    async def publish(self, topic: object, event: Any, **kw: Any) -> None:
        self.events.append((kw.get("event_id"), event))


def _ingress(url: str) -> str:
    """The path the service sees for a public URL: the ingress strips the service's prefix."""
    path = urlsplit(url).path
    assert path.startswith(PREFIX + "/"), url
    return path.removeprefix(PREFIX)


async def test_the_confirmation_pages_button_unsubscribes_behind_a_path_prefix() -> None:
    """The page's form posted to the path the service saw (/v1/unsubscribe/<token>): in the
    browser that is https://herald.example.com/v1/unsubscribe/<token>, outside the service, and
    the customer who pressed Unsubscribe went on getting the emails."""
    app = create_app(Settings(link_secret="s3cret", public_base_url=BASE))
    published = Published()
    app.state.runtime.producer = published
    token = LinkSigner("s3cret", "unsubscribe").sign({"c": "c1", "m": "m1", "k": None, "t": "x"})
    link = f"{BASE}/v1/unsubscribe/{token}"  # what List-Unsubscribe carries
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
        page = await c.get(_ingress(link))
        assert page.status_code == 200, page.text
        form = re.search(r'<form method=post action="([^"]+)">', page.text)
        assert form, page.text
        target = urljoin(link, form.group(1))  # where the browser posts the button
        assert target == link
        r = await c.post(_ingress(target), data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200, r.text
    [(reply_id, reply)] = published.events
    assert (reply_id, reply.intent, reply.customer_id, reply.topic) == (
        "unsubscribe:m1",
        "unsubscribe",
        "c1",
        "x",
    )


async def test_the_confirmation_page_is_sent_like_every_customer_page() -> None:
    """The page carries the customer's token in its URL and a button that acts for them: it is
    never cached nor sent on as a referrer, and no other site may frame it (a framed button can
    be clicked through unseen)."""
    app = create_app(Settings(link_secret="s3cret", public_base_url=BASE))
    token = LinkSigner("s3cret", "unsubscribe").sign({"c": "c1", "m": "m1", "k": None, "t": None})
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
        r = await c.get(f"/v1/unsubscribe/{token}")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
    assert r.headers["x-frame-options"] == "DENY"
