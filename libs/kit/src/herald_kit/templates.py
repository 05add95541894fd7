"""The sandboxed Jinja2 environment campaign messages are rendered in.

Built here, once, for both sides of a campaign: the dispatcher renders messages with it at send
time, and the scheduler compiles every template with it when a campaign is saved. A filter or
test the dispatcher would not have (or one it has and the scheduler did not know) can therefore
never pass the save and fail at send time.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable
from datetime import datetime
from typing import Any

from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from jinja2 import StrictUndefined, filters, pass_context, pass_environment
from jinja2.environment import Environment
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


def _bounded(size: int, what: str) -> None:
    """RenderError before a value over the size limit is built, not after."""
    if size > MAX_OUTPUT_CHARS:
        raise RenderError(f"template builds a value over the size limit ({what})")


# A printf-style conversion's width and precision ('%-9999999s', '%.*f').
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _check_percent_format(fmt: str) -> None:
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for number in (width, precision):
            if number == "*":
                raise RenderError("a width or precision taken from the arguments ('%*s')")
            if number:
                _bounded(int(number), "% format width")


def _check_format_specs(fmt: str) -> None:
    """str.format's fields: no width or precision over the limit, and none computed."""
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec:
            if "{" in spec:
                raise RenderError("a format spec computed from the arguments ('{:{}}')")
            for number in _DIGITS.findall(spec):
                _bounded(int(number), "format spec width")


def _f_center(value: Any, width: int = 80) -> str:
    if isinstance(width, int):
        _bounded(width, "center")
    return filters.do_center(value, width)


def _f_indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = str(s)
    pad = width if isinstance(width, int) else len(str(width))
    _bounded(len(text) + (text.count("\n") + 1) * pad, "indent")
    return filters.do_indent(s, width, first, blank)


@pass_environment
def _f_wordwrap(
    environment: Environment,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    _bounded(width, "wordwrap")
    text = str(s)
    # At most a line break per character.
    _bounded(len(text) * (1 + len(wrapstring or environment.newline_sequence)), "wordwrap")
    return filters.do_wordwrap(
        environment, s, width, break_long_words, wrapstring, break_on_hyphens
    )


@pass_environment
def _f_truncate(environment: Environment, s: Any, length: int = 255, *rest: Any, **kw: Any) -> str:
    # Only the length is bounded: killwords, end and leeway go to Jinja's filter as given.
    _bounded(length, "truncate")
    return filters.do_truncate(environment, s, length, *rest, **kw)


def _f_format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_percent_format(str(value))
    return filters.do_format(value, *args, **kwargs)


class BoundedSandbox(SandboxedEnvironment):
    """Jinja2's sandbox, plus limits so a template cannot exhaust memory: on `*` and `**`, on
    `%` and str.format widths, and on the filters that pad or repeat (`center`, `indent`,
    `wordwrap`, `truncate`, `format`).

    Templates are compiled without Jinja's optimiser: it evaluates constant expressions at
    compile time ('a'|center(300000000)), outside these limits, and compiling is what a save
    (or a dry run) does with a template nobody has checked yet.
    """

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(optimized=False, **options)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Refuse repetitions, powers and formatting whose result would be unreasonably
        large."""
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    if len(seq) * times > MAX_OUTPUT_CHARS:
                        raise RenderError("template builds a value over the size limit")
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_POWER:
            raise RenderError("template raises a number to an unreasonable power")
        if operator == "%" and isinstance(left, str):
            _check_percent_format(left)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """'{:>99999999}'.format(x) is bounded like `%`."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            _check_format_specs(fmt)
            return wrapped(*args, **kwargs)

        return bounded


def _environment(*, autoescape: bool) -> SandboxedEnvironment:
    env = BoundedSandbox(autoescape=autoescape, undefined=StrictUndefined)
    # Babel formatting in the customer's locale and zone (LOCALE_VAR / TZ_VAR at render time).
    env.filters.update(datetime=_f_datetime, date=_f_date, time=_f_time, number=_f_number)
    env.filters.update(
        center=_f_center,
        indent=_f_indent,
        wordwrap=_f_wordwrap,
        truncate=_f_truncate,
        format=_f_format,
    )
    # `attr` looks a name up at render time: case|attr('colour') would pass the save's check of
    # the fields a template reads and fail at send time. Without it, the save refuses it.
    del env.filters["attr"]
    return env


_TEXT = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


def message_environment(*, html: bool = False) -> SandboxedEnvironment:
    """The environment a message part renders in: autoescaping for HTML, plain otherwise."""
    return _HTML if html else _TEXT
