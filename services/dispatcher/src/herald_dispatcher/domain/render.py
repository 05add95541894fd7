"""Render a campaign's message from the latest case state in the customer's locale."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from jinja2 import StrictUndefined, Template, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from herald_contracts import MessageTemplate
from herald_kit.windows import zone

# Templates see the customer's locale and zone through these context names.
LOCALE_VAR = "_locale"
TZ_VAR = "_tz"


@functools.lru_cache(maxsize=256)
def babel_locale(tag: str) -> Locale:
    """A Babel locale for a BCP 47 tag, falling back along its chain, then to English."""
    for candidate in locale_chain(tag):
        try:
            return Locale.parse(candidate, sep="-")
        except (UnknownLocaleError, ValueError):
            continue
    return Locale.parse("en")


def _instant(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    raise TypeError(f"not a date-time: {type(value).__name__}")


@pass_context
def _f_datetime(ctx: Context, value: Any, fmt: str = "medium") -> str:
    return babel_dates.format_datetime(
        _instant(value), fmt, tzinfo=zone(ctx[TZ_VAR]), locale=ctx[LOCALE_VAR]
    )


@pass_context
def _f_date(ctx: Context, value: Any, fmt: str = "medium") -> str:
    local = _instant(value).astimezone(zone(ctx[TZ_VAR]))
    return babel_dates.format_date(local.date(), fmt, locale=ctx[LOCALE_VAR])


@pass_context
def _f_time(ctx: Context, value: Any, fmt: str = "short") -> str:
    return babel_dates.format_time(
        _instant(value), fmt, tzinfo=zone(ctx[TZ_VAR]), locale=ctx[LOCALE_VAR]
    )


@pass_context
def _f_number(ctx: Context, value: Any) -> str:
    return babel_numbers.format_decimal(value, locale=ctx[LOCALE_VAR])


# Bounds on what one operator-written template may build: a message is at most this long.
MAX_OUTPUT_CHARS = 100_000
MAX_POWER = 1_000


class BoundedSandbox(SandboxedEnvironment):
    """Jinja2's sandbox, plus limits on `*` and `**` so a template cannot exhaust memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Refuse repetitions and powers whose result would be unreasonably large."""
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    if len(seq) * times > MAX_OUTPUT_CHARS:
                        raise RenderError("template builds a value over the size limit")
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_POWER:
            raise RenderError("template raises a number to an unreasonable power")
        return super().call_binop(context, operator, left, right)


def _environment(*, autoescape: bool) -> SandboxedEnvironment:
    env = BoundedSandbox(autoescape=autoescape, undefined=StrictUndefined)
    env.filters.update(datetime=_f_datetime, date=_f_date, time=_f_time, number=_f_number)
    return env


_ENV = _environment(autoescape=False)
_HTML_ENV = _environment(autoescape=True)


@functools.lru_cache(maxsize=512)
def _compiled(text: str, html: bool) -> Template:
    """A template compiled once per text (compiling costs more than rendering)."""
    return (_HTML_ENV if html else _ENV).from_string(text)


GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€\f")


class RenderError(ValueError):
    """A template failed to render."""


@dataclass(frozen=True, slots=True)
class SmsMeasure:
    """How an SMS body is encoded and billed."""

    encoding: str
    units: int
    segments: int


def measure_sms(body: str) -> SmsMeasure:
    """GSM-7 (160/153 septets) or UCS-2 (70/67 code units) segments."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in body):
        units = sum(2 if c in GSM7_EXTENDED else 1 for c in body)
        single, multi, enc = 160, 153, "GSM-7"
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi, enc = 70, 67, "UCS-2"
    segments = 1 if units <= single else math.ceil(units / multi)
    return SmsMeasure(enc, units, segments)


def locale_chain(locale: str) -> list[str]:
    """zh-Hans-CN → [zh-Hans-CN, zh-Hans, zh], then English."""
    parts = locale.split("-")
    chain = ["-".join(parts[:i]) for i in range(len(parts), 0, -1)]
    for fallback in ("en",):
        if fallback not in chain:
            chain.append(fallback)
    return chain


def pick_template(
    by_locale: dict[str, MessageTemplate], locale: str
) -> tuple[str, MessageTemplate]:
    """The template for the first locale of the chain the campaign has (case-insensitive)."""
    lowered = {k.lower(): k for k in by_locale}
    for candidate in locale_chain(locale):
        if candidate.lower() in lowered:
            key = lowered[candidate.lower()]
            return key, by_locale[key]
    key = sorted(by_locale)[0]
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
