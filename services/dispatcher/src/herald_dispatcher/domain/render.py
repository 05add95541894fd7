"""Render a campaign's message from the latest case state in the customer's locale."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from jinja2 import Template

from herald_contracts import MessageTemplate
from herald_kit.templates import (
    LOCALE_VAR,
    MAX_OUTPUT_CHARS,
    TZ_VAR,
    RenderError,
    babel_locale,
    best_locale,
    locale_chain,
    message_environment,
    written_for,
)

# RenderError, locale_chain and written_for live in the kit (shared with the scheduler) and are
# re-exported.
__all__ = [
    "MAX_SMS_CHARS",
    "RenderError",
    "SmsMeasure",
    "locale_chain",
    "measure_sms",
    "pick_template",
    "render",
    "written_for",
]


@functools.lru_cache(maxsize=512)
def _compiled(text: str, html: bool) -> Template:
    """A template compiled once per text (compiling costs more than rendering)."""
    # The environment is the kit's, the one the scheduler compiles templates with at save time.
    return message_environment(html=html).from_string(text)


GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€\f")


# Twilio refuses a longer SMS body outright (400, error 21617) rather than split it, counting a
# character outside the Basic Multilingual Plane (an emoji) as two.
MAX_SMS_CHARS = 1600


@dataclass(frozen=True, slots=True)
class SmsMeasure:
    """How an SMS body is encoded and billed, and its length as the provider counts it."""

    encoding: str
    units: int
    segments: int
    characters: int


def measure_sms(body: str) -> SmsMeasure:
    """GSM-7 (160/153 septets) or UCS-2 (70/67 code units) segments.

    A message over one part is cut into parts of at most 153 septets (67 code units), never
    inside a GSM-7 escape pair (€, [ ...) or a UTF-16 surrogate pair (an emoji): such a
    pair that does not fit starts the next part, which can take one part more than
    units / 153 says.
    """
    if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in body):
        sizes = [2 if c in GSM7_EXTENDED else 1 for c in body]
        single, multi, enc = 160, 153, "GSM-7"
    else:
        sizes = [2 if ord(c) > 0xFFFF else 1 for c in body]
        single, multi, enc = 70, 67, "UCS-2"
    units = sum(sizes)
    # UTF-16 code units: an emoji is two, an escape pair such as € one.
    characters = sum(2 if ord(c) > 0xFFFF else 1 for c in body)
    if units <= single:
        return SmsMeasure(enc, units, 1, characters)
    segments, used = 1, 0
    for size in sizes:
        if used + size > multi:
            segments, used = segments + 1, 0
        used += size
    return SmsMeasure(enc, units, segments, characters)


def pick_template(
    by_locale: dict[str, MessageTemplate], locale: str
) -> tuple[str, MessageTemplate]:
    """The template in the locale the customer reads best (the kit's best_locale): the same
    language, closest by script and region (CLDR likely subtags: zh-TW reads zh-Hant, not
    zh-Hans), else English, else the campaign's first locale."""
    key = best_locale(by_locale, locale)
    return key, by_locale[key]


def render(
    text: str,
    variables: dict[str, Any],
    *,
    html: bool = False,
    locale: str = "en",
    tz: str = "UTC",
) -> str:
    """Render one template string in the sandbox; RenderError on any template failure.

    Filters `datetime`, `date`, `time` and `number` format with Babel in the customer's locale
    and time zone.
    """
    try:
        template = _compiled(text, html)
        out = template.render(**variables, **{LOCALE_VAR: babel_locale(locale), TZ_VAR: tz})
    except RenderError:
        raise
    except (MemoryError, RecursionError) as exc:
        raise RenderError(f"{type(exc).__name__}: template too expensive") from exc
    except Exception as exc:
        # Operators write templates; any failure of theirs is a recorded decision, not a crash.
        raise RenderError(f"{type(exc).__name__}: {exc}") from exc
    if len(out) > MAX_OUTPUT_CHARS:
        raise RenderError("rendered message is over the size limit")
    return out.strip()
