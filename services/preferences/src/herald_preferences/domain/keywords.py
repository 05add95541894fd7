"""Inbound keywords: which replies withdraw or restore consent for a channel."""

from __future__ import annotations

import unicodedata
from typing import Literal

# CTIA/carrier opt-out and opt-in words, and the Chinese operators' equivalents
# (退订 "unsubscribe", TD short for tuiding, 取消 "cancel", 退出 "quit").
STOP_WORDS = frozenset(
    {
        "STOP",
        "STOPALL",
        "UNSUBSCRIBE",
        "CANCEL",
        "END",
        "QUIT",
        "REVOKE",
        "OPTOUT",
        "OPT-OUT",
        "OPT OUT",
        "STOP ALL",
        "退订",
        "TD",
        "退定",
        "取消",
        "取消订阅",
        "退出",
    }
)
START_WORDS = frozenset({"START", "UNSTOP", "OPTIN", "OPT-IN", "开通"})


def normalise(text: str) -> str:
    """Full-width to ASCII, upper case, trimmed, trailing punctuation dropped."""
    folded = unicodedata.normalize("NFKC", text).strip().upper()
    return folded.strip(" .!,\u3002")  # NFKC already made full-width marks ASCII


def keyword(text: str | None) -> Literal["stop", "start"] | None:
    """'stop', 'start' or None for a reply's text (the whole message must be the keyword)."""
    if not text:
        return None
    word = normalise(text)
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    return None
