"""The sandbox through twilio-python itself: its errors reach the client as Twilio's would."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client
from twilio_support import SANDBOX_SID, SANDBOX_TOKEN, sandbox_serving

from herald_twilio import TwilioClient
from support import unique_phone

FROM = "+15005550006"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """twilio-python's client (on the senders' async HTTP client) pointed at the sandbox."""
    async with sandbox_serving() as url:
        twilio = TwilioClient(account_sid=SANDBOX_SID, auth_token=SANDBOX_TOKEN, base_url=url)
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
