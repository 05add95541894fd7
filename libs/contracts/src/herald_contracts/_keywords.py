"""What a customer's one-word SMS means: opt-out, opt-in and HELP keywords.

One vocabulary for every service that reads replies: the SMS sender (which refuses the next
send to a number that texted STOP) and preferences (which withdraws consent) must agree on
every word, or a customer's STOP is honoured by one and not the other.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

Keyword = Literal["stop", "start", "help"]

# Twilio's and the CTIA's opt-out words (spaced and hyphenated forms fold into these), and
# the Chinese operators' equivalents: 退订 "unsubscribe", TD short for tuiding, 退定, 取消
# "cancel", 取消订阅 "cancel the subscription", 退出 "quit".
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
        "退订",
        "TD",
        "退定",
        "取消",
        "取消订阅",
        "退出",
    }
)
# Twilio's opt-in words, OPT-IN, and 开通 "activate".
START_WORDS = frozenset({"START", "UNSTOP", "YES", "OPTIN", "开通"})
HELP_WORDS = frozenset({"HELP", "INFO"})

# Around the word: spaces and punctuation (NFKC has made full-width marks ASCII already; the
# ideographic full stop and comma have no ASCII form). Inside it: spaces, hyphens, underscores.
_EDGES = " \t\r\n.!?,;:'\"。、"
_INNER = re.compile(r"[\s\-_]+")


def normalise_keyword(text: str) -> str:
    """Width-folded (NFKC), upper case, trimmed of spaces and punctuation, with inner spaces,
    hyphens and underscores dropped: 'Opt-out', 'opt out' and 'OPTOUT' are one word."""
    folded = unicodedata.normalize("NFKC", text).upper().strip(_EDGES)
    return _INNER.sub("", folded)


def keyword(text: str | None) -> Keyword | None:
    """'stop', 'start' or 'help' when the whole message is such a keyword, else None."""
    if not text:
        return None
    word = normalise_keyword(text)
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None
