"""The sandbox through twilio-python itself: its errors reach the client as Twilio's would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client
from twilio_support import SANDBOX_SID, SANDBOX_TOKEN, sandbox_serving

from herald_twilio import TwilioClient
from support import unique_phone

FROM = "+15005550006"


@pytest.fixture
async def sandbox() -> AsyncIterator[str]:
    """The sandbox on a real port; its URL."""
    async with sandbox_serving() as url:
        yield url


@pytest.fixture
async def client(sandbox: str) -> AsyncIterator[Client]:
    """twilio-python's client (on the senders' async HTTP client) pointed at the sandbox."""
    twilio = TwilioClient(account_sid=SANDBOX_SID, auth_token=SANDBOX_TOKEN, base_url=sandbox)
    try:
        yield twilio.rest
    finally:
        await twilio.close()


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"to": "", "body": "hi"}, 21604, "A 'To' phone number is required."),
        ({"to": "+12015550100"}, 21602, "Message body is required."),
        ({"to": "12", "body": "hi"}, 21211, "The 'To' number is not a valid phone number."),
    ],
    ids=["no-to", "no-body", "bad-to"],
)
async def test_a_message_missing_a_field_is_refused_with_twilios_code(
    client: Client, fields: dict[str, str], code: int, message: str
) -> None:
    with pytest.raises(TwilioRestException) as info:
        await client.messages.create_async(from_=FROM, **fields)
    assert (info.value.status, info.value.code) == (400, code)
    assert info.value.msg == f"Unable to create record: {message}"
    assert (info.value.details or {}) == {}
    # Nothing was taken.
    assert await client.messages.list_async() == []


@pytest.mark.parametrize(
    ("fields", "code"),
    [({"to": "", "url": "https://app.example/voice"}, 21201), ({"to": "+12015550100"}, 21205)],
    ids=["no-to", "no-url"],
)
async def test_a_call_missing_a_field_is_refused_with_twilios_code(
    client: Client, fields: dict[str, str], code: int
) -> None:
    with pytest.raises(TwilioRestException) as info:
        await client.calls.create_async(from_=FROM, **fields)
    assert (info.value.status, info.value.code) == (400, code)
    assert await client.calls.list_async() == []


async def test_a_complete_message_is_taken(client: Client) -> None:
    to = unique_phone()
    msg = await client.messages.create_async(to=to, from_=FROM, body="Booked for 2 pm")
    assert msg.sid.startswith("SM") and msg.to == to and msg.status == "queued"


async def test_a_body_over_1600_characters_is_refused_with_21617(client: Client) -> None:
    to = unique_phone()
    longest = await client.messages.create_async(to=to, from_=FROM, body="x" * 1600)
    assert longest.status == "queued"
    with pytest.raises(TwilioRestException) as info:
        await client.messages.create_async(to=to, from_=FROM, body="x" * 1601)
    assert (info.value.status, info.value.code) == (400, 21617)
    assert [m.sid for m in await client.messages.list_async(to=to)] == [longest.sid]


async def test_messages_are_listed_by_sender_and_recipient(client: Client) -> None:
    to, other_to, other_from = unique_phone(), unique_phone(), "+15005550007"
    ours = [await client.messages.create_async(to=to, from_=FROM, body=f"m{i}") for i in range(2)]
    theirs = await client.messages.create_async(to=to, from_=other_from, body="other sender")
    elsewhere = await client.messages.create_async(to=other_to, from_=FROM, body="other to")

    from_ours = [m.sid for m in await client.messages.list_async(from_=FROM)]
    assert from_ours == [elsewhere.sid, ours[1].sid, ours[0].sid]  # newest first
    assert [m.sid for m in await client.messages.list_async(from_=other_from)] == [theirs.sid]
    both = await client.messages.list_async(to=to, from_=FROM)
    assert [m.sid for m in both] == [ours[1].sid, ours[0].sid]


async def test_messages_are_listed_a_page_at_a_time(client: Client) -> None:
    to = unique_phone()
    sids = [
        (await client.messages.create_async(to=to, from_=FROM, body=f"m{i}")).sid for i in range(5)
    ][::-1]  # newest first, as Twilio lists them

    first = await client.messages.page_async(to=to, page_size=2)
    assert [m.sid for m in first] == sids[:2]
    assert first.next_page_url is not None
    second = await first.next_page_async()
    assert [m.sid for m in second] == sids[2:4]
    last = await second.next_page_async()
    assert [m.sid for m in last] == sids[4:]
    assert last.next_page_url is None
    back = await last.previous_page_async()
    assert [m.sid for m in back] == sids[2:4]
    # A message sent meanwhile does not shift the pages already handed out.
    await client.messages.create_async(to=to, from_=FROM, body="later")
    assert [m.sid for m in await second.next_page_async()] == sids[4:]

    # The client follows the pages to the end, or stops at its limit.
    assert [m.sid for m in await client.messages.list_async(to=to, page_size=2)][1:] == sids
    assert [m.sid for m in await client.messages.list_async(to=to, limit=3, page_size=2)][
        1:
    ] == sids[:2]


async def test_calls_are_listed_by_status_a_page_at_a_time(client: Client, sandbox: str) -> None:
    busy_to, other_to = unique_phone(), unique_phone()
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{sandbox}/sandbox/api/twilio/behaviour",
            json={"faults": [{"kind": "busy", "share": 1.0, "to_prefix": busy_to}]},
        )
        assert r.status_code == 200, r.text
    url = "http://127.0.0.1:9/twiml"  # nobody answers: a call that is not busy fails
    busy = [(await client.calls.create_async(to=busy_to, from_=FROM, url=url)).sid for _ in "ab"]
    failed = (await client.calls.create_async(to=other_to, from_=FROM, url=url)).sid
    for _ in range(100):
        calls = await client.calls.list_async()
        if {c.sid: c.status for c in calls}.get(failed) == "failed" and all(
            c.status == "busy" for c in calls if c.sid in busy
        ):
            break
        await asyncio.sleep(0.05)

    assert [c.sid for c in await client.calls.list_async(status="busy")] == busy[::-1]
    assert [c.sid for c in await client.calls.list_async(status="failed")] == [failed]
    assert await client.calls.list_async(status="busy", to=other_to) == []
    first = await client.calls.page_async(status="busy", page_size=1)
    assert [c.sid for c in first] == busy[1:]
    assert [c.sid for c in await first.next_page_async()] == busy[:1]
