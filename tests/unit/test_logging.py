"""Log lines never carry a phone number, email address, token or secret."""

from __future__ import annotations

import io
import json
import logging

from hypothesis import given
from hypothesis import strategies as st

from herald_kit import JsonFormatter, mask


def test_masks_email_phone_and_secrets() -> None:
    line = (
        "to=ada.lovelace+x@example.co.uk phone +44 7700 900123 alt 020-7946-0018 "
        "token=abc123secret Authorization: Bearer hk_abcdefghijklmnop password='p@ss'"
    )
    out = mask(line)
    for leaked in ("ada.lovelace", "7700 900123", "7946", "abc123secret", "hk_abcdef", "p@ss"):
        assert leaked not in out
    assert "<email>" in out and "<phone>" in out


def test_masks_internationalised_email_and_bracketed_phone() -> None:
    out = mask(
        "Zoë at zoë@exämple.de or ada@bücher.example, call +1 (555) 010-4477 or (020) 7946 0018"
    )
    for leaked in ("zoë@", "exämple", "bücher", "555", "4477", "7946"):
        assert leaked not in out
    assert out.count("<email>") == 2 and out.count("<phone>") == 2


def test_masks_url_encoded_phone_and_email() -> None:
    out = mask("GET /v1/contacts/%2B12015550199 and ?to=%2b447700900123&e=ada%40example.com")
    assert "2015550199" not in out and "7700900123" not in out and "ada" not in out


def test_keeps_ordinary_numbers_and_ids() -> None:
    assert mask("case-1234 version 12 took 250 ms") == "case-1234 version 12 took 250 ms"


@given(st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True))
def test_any_e164_number_is_masked(number: str) -> None:
    assert number not in mask(f"sending to {number} now")


def test_json_formatter_masks_extra_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("herald.test.mask")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("sent", extra={"to": "+12015550123", "email": "a@b.example"})
    record = json.loads(stream.getvalue())
    assert record["to"] == "<phone>" and record["email"] == "<email>"
    assert record["service"] == "test"
