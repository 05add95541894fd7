"""What a customer's SMS means: opt-out and opt-in keywords, HELP, and campaign reply codes."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from herald_contracts import Intent, keyword, normalise_keyword

DEFAULT_REPLIES: Mapping[str, Intent] = {"1": "confirm", "2": "reschedule", "3": "callback"}


def interpret(text: str, replies: Mapping[str, Intent] = DEFAULT_REPLIES) -> Intent:
    """The intent of an inbound SMS; 'other' when it is free text.

    An opt-out word always wins (the law's and the carriers' rule). A reply code the business
    configured comes next, so a code such as YES answers the campaign rather than reading as an
    opt-in word; then opt-in and HELP words. Codes are compared as the keywords are: case,
    width, surrounding punctuation and inner spaces or hyphens aside."""
    word = keyword(text)
    if word == "stop":
        return "stop"
    codes = {normalise_keyword(code): intent for code, intent in replies.items()}
    answer = codes.get(normalise_keyword(text))
    if answer is not None:
        return answer
    return word or "other"


def number_key(number: str) -> str:
    """A stable key for a phone number, so rows are found by number without storing it plainly."""
    return hashlib.sha256(number.strip().encode()).hexdigest()
