"""The sandbox's SMTP sink port: what its README says, what `make run` sets, what it logs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from herald_devstack import BY_NAME, Stack, StackConfig
from herald_sandbox.app import create_app
from herald_sandbox.config import Settings

README = (Path(__file__).parents[2] / "services" / "sandbox" / "README.md").read_text()


def test_the_readme_states_the_default_the_settings_have() -> None:
    said = re.search(r"left at its default, (\d+),", README)
    assert said is not None, "the README no longer states the SMTP sink's default port"
    assert int(said[1]) == Settings().smtp_port


def test_make_run_puts_the_sink_where_the_email_sender_sends() -> None:
    stack = Stack(StackConfig(port_offset=300))
    sandbox = stack.env_for(BY_NAME["sandbox"])["HERALD_SANDBOX_SMTP_PORT"]
    sender = stack.env_for(BY_NAME["email-sender"])["HERALD_EMAIL_SENDER_SMTP_PORT"]
    assert sandbox == sender == str(2525 + 300)


async def test_a_sink_on_a_free_port_logs_which(capsys: pytest.CaptureFixture[str]) -> None:
    app = create_app(Settings(mongo_db=""))  # the service's JSON logs go to stdout
    async with app.router.lifespan_context(app):
        port = app.state.smtp.port
    assert port != 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    said = [line for line in lines if line.get("msg") == "SMTP sink listening"]
    assert [line.get("smtp_port") for line in said] == [port]
