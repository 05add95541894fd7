"""What Twilio's error answers become, through twilio-python and a real local HTTP server: a
5xx that may have been taken (Twilio's 500, a gateway's 502/504) is an unknown outcome, never
a refusal to retry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from herald_twilio import ProviderTimeout, TwilioClient

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
