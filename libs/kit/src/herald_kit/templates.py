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
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, date, datetime, time
from typing import Any

from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from babel.core import get_global
from jinja2 import (
    StrictUndefined,
    filters,
    nodes,
    pass_context,
    pass_environment,
    pass_eval_context,
)
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Environment
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from herald_kit.windows import zone

__all__ = [
    "LOCALE_VAR",
    "MAX_OUTPUT_CHARS",
    "MAX_POWER",
    "MAX_STEPS",
    "TZ_VAR",
    "BoundedSandbox",
    "RenderError",
    "babel_locale",
    "best_locale",
    "locale_chain",
    "message_environment",
    "written_for",
]

# Templates see the customer's locale and zone through these context names.
LOCALE_VAR = "_locale"
TZ_VAR = "_tz"

# Bounds on what one operator-written template may build: a message is at most this long.
MAX_OUTPUT_CHARS = 100_000
MAX_POWER = 1_000
# Loop iterations and calls one render may take (a message takes a few hundred at most).
MAX_STEPS = 20_000


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


@functools.lru_cache(maxsize=1024)
def _likely(tag: str) -> tuple[str, str | None, str | None] | None:
    """A tag's language, script and region, the missing ones filled in with CLDR's likely
    subtags (zh-TW → zh Hant TW, zh-Hant → zh Hant TW, zh → zh Hans CN, pt → pt Latn BR);
    None for a tag Babel cannot read."""
    try:
        loc = Locale.parse(tag, sep="-")  # Babel fills in the script a region implies
    except (UnknownLocaleError, ValueError):
        return None
    language, script, region = loc.language, loc.script, loc.territory
    if script is None or region is None:
        subtags = get_global("likely_subtags")
        keys = [f"{language}_{script}"] if script else []
        keys += [f"{language}_{region}"] if region else []
        found = next((subtags[k] for k in [*keys, language] if k in subtags), None)
        if found is not None:
            likely = Locale.parse(found)
            script = script or likely.script
            region = region or likely.territory
    return language, script, region


def _closest(available: Iterable[str], wanted: str) -> str | None:
    """Of the tags available, the one of wanted's language closest to it, or None.

    Closest: the tag itself (case-insensitive); then, likely subtags filled in on both sides,
    the same script and region (zh-TW for zh-Hant-TW, zh-Hant for zh-TW); then the same script
    (Traditional for Traditional, whatever the region); then the same region; then one of
    wanted's own chain (en for en-GB); then any of the language, in order.
    """
    target = _likely(wanted)
    chain = [c.lower() for c in locale_chain(wanted)[:-1]] if target else []
    best: tuple[tuple[bool, ...], str] | None = None
    for tag in sorted(available):
        if tag.lower() == wanted.lower():
            return tag
        got = _likely(tag)
        if target is None or got is None or got[0] != target[0]:
            continue
        same_script, same_region = got[1] == target[1], got[2] == target[2]
        rank = (same_script and same_region, same_script, same_region, tag.lower() in chain)
        if best is None or rank > best[0]:
            best = (rank, tag)
    return best[1] if best else None


def best_locale(available: Iterable[str], wanted: str) -> str:
    """The locale of those available (at least one) a customer of locale `wanted` reads best.

    A template of the customer's language, the closest by script and region (see _closest: a
    Taiwanese customer gets Traditional Chinese, a Brazilian one European Portuguese rather
    than another language); else an English one (en, else the closest to en); else the first.
    """
    tags = sorted(available)
    return _closest(tags, wanted) or _closest(tags, "en") or tags[0]


def written_for(tag: str, wanted: str) -> bool:
    """Whether text in locale `tag` is written for a customer of locale `wanted`, so that the
    customer's own tag names it more fully: `tag` is wanted or one of its parents (zh for zh-HK),
    or it names no region and the language and script wanted has, likely subtags filled in
    (zh-Hant for zh-HK and zh-TW; not zh-Hans for zh-HK, nor zh-TW for zh-HK)."""
    parts = wanted.lower().split("-")
    if tag.lower() in {"-".join(parts[:i]) for i in range(1, len(parts) + 1)}:
        return True
    got, target = _likely(tag), _likely(wanted)
    if got is None or target is None or got[:2] != target[:2]:
        return False
    return Locale.parse(tag, sep="-").territory is None


@functools.lru_cache(maxsize=256)
def babel_locale(tag: str) -> Locale:
    """A Babel locale for a BCP 47 tag, falling back along its chain, then to English."""
    for candidate in locale_chain(tag):
        try:
            return Locale.parse(candidate, sep="-")
        except (UnknownLocaleError, ValueError):
            continue
    return Locale.parse("en")


def _calendar_date(value: Any) -> date | None:
    """A calendar date (a date, or a date-only ISO string such as "2026-12-24"), else None."""
    if isinstance(value, datetime):
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)  # refuses a string with a time of day
        except ValueError:
            return None
    return None


def _instant(value: Any, tz: str) -> datetime:
    """An aware instant. A naive date-time is UTC (whatever the server's zone is); a calendar
    date is the start of that day in the customer's zone."""
    day = _calendar_date(value)
    if day is not None:
        return datetime.combine(day, time(), tzinfo=zone(tz))
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    raise TypeError(f"not a date-time: {type(value).__name__}")


@pass_context
def _f_datetime(ctx: Context, value: Any, fmt: str = "medium") -> str:
    return babel_dates.format_datetime(
        _instant(value, ctx[TZ_VAR]), fmt, tzinfo=zone(ctx[TZ_VAR]), locale=ctx[LOCALE_VAR]
    )


@pass_context
def _f_date(ctx: Context, value: Any, fmt: str = "medium") -> str:
    # A calendar date is the same day everywhere: converting it as an instant would show a
    # customer west of UTC the day before.
    day = _calendar_date(value)
    if day is None:
        day = _instant(value, ctx[TZ_VAR]).astimezone(zone(ctx[TZ_VAR])).date()
    return babel_dates.format_date(day, fmt, locale=ctx[LOCALE_VAR])


@pass_context
def _f_time(ctx: Context, value: Any, fmt: str = "short") -> str:
    return babel_dates.format_time(
        _instant(value, ctx[TZ_VAR]), fmt, tzinfo=zone(ctx[TZ_VAR]), locale=ctx[LOCALE_VAR]
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


def _f_replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> Any:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        _bounded(_replaced_size(s, old, new, -1 if count is None else count), "replace")
    return filters.do_replace(eval_ctx, s, old, new, count)


def _f_join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    items = _check_size(list(value))  # what the items print as, nested ones too
    _bounded(_joined_size(str(d), items), "join")
    return str(filters.do_join(eval_ctx, items, d, attribute))


def _f_batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
    _bounded(linecount, "batch")
    return filters.do_batch(value, linecount, fill_with)


def _f_slice(value: Any, slices: int, fill_with: Any = None) -> Any:
    _bounded(slices, "slice")
    return filters.do_slice(value, slices, fill_with)


@pass_environment
def _f_sum(environment: Environment, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    items = list(iterable)
    if isinstance(start, list | tuple):
        # Adding lists: the total length is known before the list is built.
        get = filters.make_attrgetter(environment, attribute) if attribute is not None else None
        values = [get(x) for x in items] if get is not None else items
        _bounded(len(start) + sum(len(v) for v in values if isinstance(v, list | tuple)), "sum")
    return filters.sync_do_sum(environment, items, attribute, start)


def _replaced_size(s: str, old: str, new: str, count: int) -> int:
    times = s.count(old) if old else len(s) + 1
    if count >= 0:
        times = min(times, count)
    return len(s) + times * (len(new) - len(old))


def _joined_size(separator: str, items: list[Any]) -> int:
    texts = [len(x) for x in items if isinstance(x, str)]
    return sum(texts) + len(separator) * max(len(items) - 1, 0)


def _str_method_size(method: str, text: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """How long a str method's result can be, before it is built (0 when it cannot grow)."""
    if method == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        return _replaced_size(text, args[0], args[1], count if isinstance(count, int) else -1)
    if method == "join" and args:
        return _joined_size(text, list(args[0]))
    if method in ("ljust", "rjust", "center", "zfill") and args and isinstance(args[0], int):
        return max(len(text), args[0])
    if method == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        return len(text) + text.count("\t") * (size if isinstance(size, int) else 8)
    if method == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        return len(text) * max(longest, 1)
    return 0


def _check_size(value: Any) -> Any:
    """`value`, unless it is over the size limit: text by its length, a container by all it
    holds, nested ones counted as often as they appear (as printing it would write them)."""
    budget = MAX_OUTPUT_CHARS
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            budget -= len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            budget -= len(item)
            if budget >= 0:
                stack.extend(item)
        elif isinstance(item, dict):
            budget -= len(item)
            if budget >= 0:
                stack.extend(item.keys())
                stack.extend(item.values())
        if budget < 0:
            raise RenderError("template builds a value over the size limit")
    return value


# Steps (loop iterations and calls) left to the render in progress; None outside a render.
_STEPS: ContextVar[list[int] | None] = ContextVar("template_steps", default=None)


def _step() -> None:
    budget = _STEPS.get()
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise RenderError("template takes too many steps (loops or calls)")


def _counted(iterable: Any) -> Iterator[Any]:
    """A loop's items, each taking a step of the render's budget."""
    for item in iterable:
        _step()
        yield item


def _size_checked(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose result is refused when over the size limit (Jinja's argument-passing
    marks are kept: they travel in the wrapper's __dict__)."""

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        return _check_size(function(*args, **kwargs))

    return checked


def _bounded_concat(parts: Iterable[str]) -> str:
    """Environment.concat ("".join), refusing output over the size limit as it streams: the
    whole message, a macro's or a {% set %} block's body. The outermost one (rendering runs
    inside it) gives the render its budget of steps."""
    token = _STEPS.set([MAX_STEPS]) if _STEPS.get() is None else None
    try:
        pieces: list[str] = []
        total = 0
        for piece in parts:
            total += len(piece)
            if total > MAX_OUTPUT_CHARS:
                raise RenderError("template output is over the size limit")
            pieces.append(piece)
        return "".join(pieces)
    finally:
        if token is not None:
            _STEPS.reset(token)


class _OutputBuffer(list[str]):
    """What a macro, a {% set %} block or a call block writes before it is joined: refused as
    soon as it is over the size limit, not once it is all held."""

    total = 0

    def append(self, piece: str) -> None:
        self._count(len(piece))
        super().append(piece)

    def extend(self, pieces: Iterable[str]) -> None:
        for piece in pieces:
            self.append(piece)

    def _count(self, size: int) -> None:
        self.total += size
        if self.total > MAX_OUTPUT_CHARS:
            raise RenderError("template output is over the size limit")


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with `~` (which builds text without a call the sandbox sees)
    checked against the size limit, and every loop's items counted as steps."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_size(")
        super().visit_Concat(node, frame)
        self.write(")")

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output_buffer()")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        counted = nodes.Call(nodes.EnvironmentAttribute("counted"), [node.iter], [], None, None)
        super().visit_For(
            nodes.For(
                node.target,
                counted,
                node.body,
                node.else_,
                node.test,
                node.recursive,
                lineno=node.lineno,
                environment=self.environment,
            ),
            frame,
        )


class BoundedSandbox(SandboxedEnvironment):
    """Jinja2's sandbox, plus limits so a template cannot exhaust memory.

    Every value a template builds stays within MAX_OUTPUT_CHARS: whatever grows a value past
    its inputs is refused before the value is built (`*`, `**`, `%` and str.format widths; the
    filters `center`, `indent`, `wordwrap`, `truncate`, `format`, `replace`, `join`, `batch`,
    `slice`, `sum`; the str methods `replace`, `join`, `ljust`, `rjust`, `center`, `zfill`,
    `expandtabs`, `translate`), and what grows it a bounded number of times is refused once
    built (`+`, `~`, any call's or filter's result, a list a call changed, and the output, a
    macro's and a block's, which are counted as they are written). `lipsum` is gone: it writes as
    many paragraphs as asked. A render takes at most MAX_STEPS steps, a loop iteration or a
    call each, so nested loops or a macro calling itself twice cannot keep a sender's event
    loop busy for hours.

    Templates are compiled without Jinja's optimiser: it evaluates constant expressions at
    compile time ('a'|center(300000000)), outside these limits, and compiling is what a save
    (or a dry run) does with a template nobody has checked yet.
    """

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BoundedCodeGenerator
    concat = staticmethod(_bounded_concat)
    checked_size = staticmethod(_check_size)
    counted = staticmethod(_counted)
    output_buffer = _OutputBuffer

    def __init__(self, **options: Any) -> None:
        super().__init__(optimized=False, **options)
        del self.globals["lipsum"]

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
        return _check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """A call from the template: a str method that grows text is sized before it runs,
        and any result over the size limit is refused."""
        _step()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and callable(__obj):
            if __obj.__name__ == "join" and args:
                args = (_check_size(list(args[0])), *args[1:])  # sized, then joined
            _bounded(_str_method_size(__obj.__name__, owner, args, kwargs), f"str.{__obj.__name__}")
        result = _check_size(super().call(__context, __obj, *args, **kwargs))
        if isinstance(owner, list | dict | set):
            _check_size(owner)  # append, extend, update: what the call grew
        return result

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
        replace=pass_eval_context(_f_replace),
        join=pass_eval_context(_f_join),
        batch=_f_batch,
        slice=_f_slice,
        sum=_f_sum,
    )
    env.filters.update({name: _size_checked(f) for name, f in env.filters.items()})
    # `attr` looks a name up at render time: case|attr('colour') would pass the save's check of
    # the fields a template reads and fail at send time. Without it, the save refuses it.
    del env.filters["attr"]
    return env


_TEXT = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


def message_environment(*, html: bool = False) -> SandboxedEnvironment:
    """The environment a message part renders in: autoescaping for HTML, plain otherwise."""
    return _HTML if html else _TEXT
