"""What a customer's SMS means: opt-out and opt-in keywords, HELP, and campaign reply codes."""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Mapping

from herald_contracts import Intent

# Twilio's and the CTIA's opt-out words, plus 退订 / TD used by carriers in China.
STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "退订", "TD"}
)
START_WORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_WORDS = frozenset({"HELP", "INFO"})
DEFAULT_REPLIES: Mapping[str, Intent] = {"1": "confirm", "2": "reschedule", "3": "callback"}


def normalise(text: str) -> str:
    """Upper-case, width-folded (NFKC folds fullwidth digits), trimmed of spaces and punctuation."""
    folded = unicodedata.normalize("NFKC", text).strip().upper()
    return folded.strip(" .!?,;:'\"")


def interpret(text: str, replies: Mapping[str, Intent] = DEFAULT_REPLIES) -> Intent:
    """The intent of an inbound SMS; 'other' when it is free text."""
    word = normalise(text)
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return replies.get(word, "other")


def number_key(number: str) -> str:
    """A stable key for a phone number, so rows are found by number without storing it plainly."""
    return hashlib.sha256(number.strip().encode()).hexdigest()
