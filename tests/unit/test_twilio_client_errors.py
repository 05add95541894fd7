"""What Twilio's error answers become, through twilio-python and a real local HTTP server: a
429's Retry-After reaches the sender, Twilio's 503 is a refusal to retry, and a 5xx that may
have been taken (Twilio's 500, a gateway's 502/504) is an unknown outcome, never a refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from herald_twilio import ProviderBusy, ProviderTimeout, TwilioClient

SID = "AC" + "0" * 32
Answer = Callable[[], web.Response]


def twilio_error(status: int, code: int, message: str, **headers: str) -> Answer:
    """An error as Twilio's API shapes it."""
    body = {"code": code, "message": message, "more_info": "", "status": status}
    return lambda: web.json_response(body, status=status, headers=headers)


def gateway(status: int) -> Answer:
    """What a proxy in front of the API answers: HTML, no Twilio code."""
    return lambda: web.Response(
        status=status, text=f"<html><body>{status}</body></html>", content_type="text/html"
    )


@asynccontextmanager
async def answering(answer: Answer) -> AsyncIterator[TwilioClient]:
    """A local HTTP server giving every request `answer`, and a TwilioClient pointed at it."""

    async def handler(request: web.Request) -> web.Response:
        return answer()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = TwilioClient(
        account_sid=SID, auth_token="token", base_url=f"http://127.0.0.1:{port}", timeout=5.0
    )
    try:
        yield client
    finally:
        await client.close()
        await runner.cleanup()


async def send(client: TwilioClient) -> None:
    await client.create(
        client.rest.messages.create_async(to="+12015550100", from_="+15005550006", body="hi")
    )


async def test_a_429s_retry_after_reaches_the_sender() -> None:
    async with answering(
        twilio_error(429, 20429, "Too Many Requests", **{"Retry-After": "7"})
    ) as c:
        with pytest.raises(ProviderBusy) as info:
            await send(c)
    assert (info.value.http_status, info.value.code) == (429, "20429")
    assert info.value.retry_after == 7.0


async def test_twilios_503_is_busy_and_keeps_its_retry_after() -> None:
    unavailable = twilio_error(503, 20503, "Service unavailable", **{"Retry-After": "3"})
    async with answering(unavailable) as c:
        with pytest.raises(ProviderBusy) as info:
            await send(c)
    assert (info.value.http_status, info.value.code, info.value.retry_after) == (503, "20503", 3.0)


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (twilio_error(500, 20500, "An internal server error has occurred"), "20500"),
        (gateway(502), "502"),
        (gateway(503), "503"),
        (gateway(504), "504"),
    ],
    ids=["twilio-500", "gateway-502", "gateway-503", "gateway-504"],
)
async def test_a_5xx_that_may_have_been_taken_is_an_unknown_outcome_not_busy(
    answer: Answer, code: str
) -> None:
    async with answering(answer) as c:
        with pytest.raises(ProviderTimeout) as info:
            await send(c)
    assert info.value.code == code


async def test_a_429_without_retry_after_has_none() -> None:
    async with answering(twilio_error(429, 20429, "Too Many Requests")) as c:
        with pytest.raises(ProviderBusy) as info:
            await send(c)
    assert info.value.retry_after is None
