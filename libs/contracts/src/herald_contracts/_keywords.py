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
# the Chinese operators' equivalents, in simplified and traditional characters: 退订/退訂
# "unsubscribe", TD short for tuiding, 退定, 取消 "cancel", 取消订阅/取消訂閱 "cancel the
# subscription", 退出 "quit".
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
        "退訂",
        "TD",
        "退定",
        "取消",
        "取消订阅",
        "取消訂閱",
        "退出",
    }
)
# Twilio's opt-in words, OPT-IN, and 开通 "activate".
START_WORDS = frozenset({"START", "UNSTOP", "YES", "OPTIN", "开通"})
# Twilio's HELP and INFO, and 帮助/幫助 "help", 求助 "ask for help", 客服 "customer service".
HELP_WORDS = frozenset({"HELP", "INFO", "帮助", "幫助", "求助", "客服"})

# Around the word: spaces and punctuation (NFKC has made full-width marks ASCII already; the
# ideographic full stop and comma have no ASCII form). Inside it: spaces, hyphens, underscores.
_EDGES = " \t\r\n.!?,;:'\"。、"
_INNER = re.compile(r"[\s\-_]+")
# Dropped wherever they stand, so a word a phone decorates is still the word: symbols and
# emoji (So, and Sk: emoji skin tones, modifier letters), invisible format characters (Cf:
# zero-width space and joiner, BOM), brackets and quotation marks (Ps, Pe, Pi, Pf: '(STOP)',
# '【退订】', '«STOP»'), enclosing marks (Me: the keycap of '1️⃣'), and the variation selectors
# that ask for an emoji's presentation (U+FE0F after 'STOP' or a digit).
_DECORATION = frozenset({"So", "Sk", "Cf", "Ps", "Pe", "Pi", "Pf", "Me"})
_SELECTORS = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]")


def _undecorated(text: str) -> str:
    text = _SELECTORS.sub("", text)
    return "".join(c for c in text if unicodedata.category(c) not in _DECORATION)


def normalise_keyword(text: str) -> str:
    """Width-folded (NFKC), upper case, without symbols, emoji, invisible characters and
    brackets, trimmed of spaces and punctuation, with inner spaces, hyphens and underscores
    dropped: 'Opt-out', 'opt out', '(OPTOUT)' and 'OPTOUT 🛑' are one word.

    A text made of such decoration alone is kept as it is (folded and trimmed), so a reply
    code that is an emoji still compares equal to itself and to nothing else."""
    folded = unicodedata.normalize("NFKC", text).upper()
    bare = _undecorated(folded).strip(_EDGES)
    return _INNER.sub("", bare or folded.strip(_EDGES))


def _unrepeated(word: str) -> str:
    """A word said more than once in a row said once: 'STOPSTOP' (from 'STOP STOP') is STOP."""
    period = (word + word).find(word, 1)
    return word[:period] if 0 < period < len(word) else word


# A short message that asks in so many words to stop the texts: 47 CFR 64.1200(a)(10) has
# consent revoked "by any reasonable means", read here in a deliberately narrow set of English
# forms. The whole message must be one of them, so "don't stop", "stop by tomorrow", "cancel
# this" or "please stop calling me at night" are not: any word outside the forms (a negation,
# another request, a time) leaves the message to a person. Courtesy words (`_COURTESY`,
# anywhere) and an opening request (`_ASKING`: I WANT TO, CAN YOU, ...) set aside, it is:
#   - an opt-out word that can mean nothing else (`_PLAIN_STOP_WORDS`: STOP, STOPALL,
#     UNSUBSCRIBE, OPT OUT, 退订, ...), alone or repeated, whatever the punctuation around it:
#     "please stop", "Stop, thank you!", "unsubscribe please", "*STOP*", "opt out opt out".
#     CANCEL, END, QUIT, REVOKE, TD, 取消 and 退出 are an opt-out only as the whole message:
#     "I want to cancel", "can you cancel?" or "please end" are about the appointment or the
#     case as likely as about the texts, so they are left to a person;
#   - STOP `<texting>` [ME|US] [`<texts>`|THESE|THIS|THOSE|THEM|ALL]: "stop texting me",
#     "stop sending me these", "stop messaging us";
#   - STOP `<texts>`: "stop these messages", "stop all the texts";
#   - CANCEL [MY] `<subscription>`: "cancel my subscription";
#   - UNSUBSCRIBE, OPT OUT or OPT ME OUT, then [ME], then [FROM|OF `<texts>`|`<subscription>`|
#     THESE|THIS|THOSE|THEM|ALL]: "unsubscribe me", "opt me out", "unsubscribe me from this
#     list", "opt out of these texts".
# `<texting>`: TEXTING, MESSAGING, SENDING, CONTACTING, SPAMMING. `<texts>`: determiners
# (THE, THESE, THIS, THOSE, YOUR, ALL) then MESSAGE(S), TEXT(S), SMS, ALERT(S), NOTIFICATIONS,
# REMINDERS or UPDATES; `<subscription>`: the same determiners then LIST(S) or SUBSCRIPTION(S).
_PHRASE_WORDS = 10
_PLAIN_STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "OPTOUT", "退订", "退訂", "退定", "取消订阅", "取消訂閱"}
)
_COURTESY = frozenset({"PLEASE", "PLS", "PLZ", "KINDLY", "NOW", "THANKS", "THX", "OK", "OKAY"})
_ASKING = (
    ("I", "WANT", "TO"),
    ("I", "WOULD", "LIKE", "TO"),
    ("ID", "LIKE", "TO"),
    ("CAN", "YOU"),
    ("COULD", "YOU"),
)
_TEXTING = frozenset({"TEXTING", "MESSAGING", "SENDING", "CONTACTING", "SPAMMING"})
_DETERMINERS = frozenset({"THE", "THESE", "THIS", "THOSE", "YOUR", "ALL"})
_TEXTS = frozenset(
    {
        "MESSAGES",
        "MESSAGE",
        "TEXTS",
        "TEXT",
        "SMS",
        "ALERTS",
        "ALERT",
        "NOTIFICATIONS",
        "REMINDERS",
        "UPDATES",
    }
)
# The texts named by a pronoun: only after a verb that says what is to stop ("stop sending me
# these"), as "cancel this" alone may well be about an appointment.
_THEM = (["THESE"], ["THIS"], ["THOSE"], ["THEM"], ["ALL"])
_LISTS = frozenset({"LIST", "LISTS", "SUBSCRIPTION", "SUBSCRIPTIONS"})
_TOKENS = re.compile(r"[^\W_]+")
_APOSTROPHES = re.compile("['\u2019]")


def _these(words: list[str], nouns: frozenset[str] = _TEXTS) -> bool:
    """`words` name the texts: [determiner(s)] noun, e.g. 'these messages', 'all the texts'."""
    while words and words[0] in _DETERMINERS:
        words = words[1:]
    return len(words) == 1 and words[0] in nouns


def _asks_to_stop(text: str) -> bool:
    """True when the message is one of the opt-out phrases described above."""
    plain = _undecorated(_APOSTROPHES.sub("", unicodedata.normalize("NFKC", text).upper()))
    words = _TOKENS.findall(plain)
    if not 0 < len(words) <= _PHRASE_WORDS:
        return False
    # "thank you" as one courtesy, then the rest of them wherever they stand.
    joined = " ".join(words).replace("THANK YOU", "THANKS")
    words = [w for w in joined.split() if w not in _COURTESY]
    for opening in _ASKING:
        if tuple(words[: len(opening)]) == opening:
            words = words[len(opening) :]
            break
    if not words:
        return False
    if _unrepeated("".join(words)) in _PLAIN_STOP_WORDS:
        return True
    head, rest = words[0], words[1:]
    if head == "STOP" and rest and rest[0] in _TEXTING:
        rest = rest[1:]
        if rest and rest[0] in ("ME", "US"):
            rest = rest[1:]
        return not rest or rest in _THEM or _these(rest)
    if head == "STOP":
        return _these(rest)
    if head == "CANCEL":
        return _these(rest[1:] if rest[:1] == ["MY"] else rest, _LISTS)
    if head == "OPT":  # OPT OUT, OPT ME OUT
        if rest[:1] == ["ME"]:
            rest = rest[1:]
        if rest[:1] != ["OUT"]:
            return False
        head, rest = "OPTOUT", rest[1:]
    if head in ("UNSUBSCRIBE", "OPTOUT"):
        if rest and rest[0] == "ME":
            rest = rest[1:]
        if rest and rest[0] in ("FROM", "OF"):
            rest = rest[1:]
            return rest in _THEM or _these(rest) or _these(rest, _LISTS)
        return not rest
    return False


def keyword(text: str | None) -> Keyword | None:
    """'stop', 'start' or 'help' when the whole message is such a keyword (said once or
    repeated: 'STOP STOP'), else None; 'stop' too for a short message that asks in so many
    words to stop the texts ('please stop texting me', 'unsubscribe me'; see the forms
    above)."""
    if not text:
        return None
    word = normalise_keyword(text)
    once = _unrepeated(word)
    if word in STOP_WORDS or once in STOP_WORDS:
        return "stop"
    if word in START_WORDS or once in START_WORDS:
        return "start"
    if word in HELP_WORDS or once in HELP_WORDS:
        return "help"
    if _asks_to_stop(text):
        return "stop"
    return None
