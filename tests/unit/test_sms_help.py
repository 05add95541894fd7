"""HELP: asked in English or Chinese, answered in the language the number was last written to."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from herald_sms_sender.config import Settings
from herald_sms_sender.replies import Replies

ENGLISH = "Acme: updates about your case. Help: 0800 123 456. Reply STOP to opt out."


class Ledger:
    """The last message sent to the number was written in `locale` (no message: None)."""

    def __init__(self, locale: str | None) -> None:
        self.row: dict[str, Any] | None = None
        if locale is not None:
            self.row = {"_id": "msg-1", "customer_id": "cust-1", "locale": locale}

    async def last_to(self, key: str) -> dict[str, Any] | None:
        return self.row


class Producer:
    def __init__(self) -> None:
        self.published: list[Any] = []

    async def publish(self, etype: Any, body: Any, **kw: Any) -> None:
        self.published.append(body)


def replies(locale: str | None, settings: Settings | None = None) -> Replies:
    settings = settings or Settings(brand="Acme", help_contact="0800 123 456")
    return Replies(
        Ledger(locale),  # type: ignore[arg-type]
        Producer(),  # type: ignore[arg-type]
        keywords={"1": "confirm"},
        help_answer=settings.help_text.format(brand=settings.brand, contact=settings.help_contact),
        help_answers=settings.help_answers(),
    )


@pytest.mark.parametrize("word", ["HELP", "info", "帮助", "幫助", "求助", "客服", "【帮助】"])
async def test_help_is_answered_in_english_or_chinese(word: str) -> None:
    answer = await replies(None).handle(sid="SM1", from_="+8613800138000", body=word)
    assert answer == ENGLISH  # a number never messaged: English


@pytest.mark.parametrize(
    ("locale", "says"),
    [
        ("zh-CN", "回复“退订”"),  # simplified Chinese
        ("zh", "回复“退订”"),
        ("zh-TW", "回覆「退訂」"),  # traditional, as Taiwan and Hong Kong read
        ("zh-HK", "回覆「退訂」"),
        ("zh-Hant", "回覆「退訂」"),
    ],
)
async def test_help_is_answered_in_the_language_of_the_last_message(locale: str, says: str) -> None:
    answer = await replies(locale).handle(sid="SM1", from_="+8613800138000", body="帮助")
    assert answer is not None
    assert says in answer and "Acme" in answer and "0800 123 456" in answer
    assert "STOP" in answer


@pytest.mark.parametrize("locale", ["en", "en-GB", "fr-FR", "de"])
async def test_a_locale_without_its_own_answer_gets_english(locale: str) -> None:
    assert await replies(locale).handle(sid="SM1", from_="+1", body="HELP") == ENGLISH


async def test_the_answers_per_locale_are_configurable() -> None:
    settings = Settings(
        brand="Acme",
        help_contact="0800 123 456",
        help_texts={"fr": "{brand} : aide au {contact}. Répondez STOP pour vous désabonner."},
    )
    answer = await replies("fr-CA", settings).handle(sid="SM1", from_="+1", body="HELP")
    assert answer == "Acme : aide au 0800 123 456. Répondez STOP pour vous désabonner."
    # Configured answers replace the defaults: Chinese is answered in English then.
    assert await replies("zh-CN", settings).handle(sid="SM1", from_="+1", body="帮助") == ENGLISH


def test_an_answer_keyed_by_no_language_tag_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="help_texts"):
        Settings(help_texts={"French": "..."})


async def test_help_answer_is_none_for_anything_else() -> None:
    assert await replies("zh-CN").handle(sid="SM1", from_="+1", body="1") is None
