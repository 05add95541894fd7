"""The sandboxed Jinja2 environment campaign messages are rendered in.

Built here, once, for both sides of a campaign: the dispatcher renders messages with it at send
time, and the scheduler compiles every template with it when a campaign is saved. A filter or
test the dispatcher would not have (or one it has and the scheduler did not know) can therefore
never pass the save and fail at send time.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from jinja2 import StrictUndefined, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from herald_kit.windows import zone

__all__ = [
    "LOCALE_VAR",
    "MAX_OUTPUT_CHARS",
    "MAX_POWER",
    "TZ_VAR",
    "BoundedSandbox",
    "RenderError",
    "babel_locale",
    "locale_chain",
    "message_environment",
]

# Templates see the customer's locale and zone through these context names.
LOCALE_VAR = "_locale"
TZ_VAR = "_tz"

# Bounds on what one operator-written template may build: a message is at most this long.
MAX_OUTPUT_CHARS = 100_000
MAX_POWER = 1_000


class RenderError(ValueError):
    """A template failed to render."""


def locale_chain(locale: str) -> list[str]:
    """zh-Hans-CN → [zh-Hans-CN, zh-Hans, zh], then English."""
    parts = locale.split("-")
    chain = ["-".join(parts[:i]) for i in range(len(parts), 0, -1)]
    for fallback in ("en",):
        if fallback not in chain:
            chain.append(fallback)
    return chain


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
    # Babel formatting in the customer's locale and zone (LOCALE_VAR / TZ_VAR at render time).
    env.filters.update(datetime=_f_datetime, date=_f_date, time=_f_time, number=_f_number)
    return env


_TEXT = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


def message_environment(*, html: bool = False) -> SandboxedEnvironment:
    """The environment a message part renders in: autoescaping for HTML, plain otherwise."""
    return _HTML if html else _TEXT
