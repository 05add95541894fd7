"""Render a campaign's message from the latest case state in the customer's locale."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from herald_contracts import MessageTemplate

_ENV = SandboxedEnvironment(autoescape=False, undefined=StrictUndefined)
_HTML_ENV = SandboxedEnvironment(autoescape=True, undefined=StrictUndefined)

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


def render(text: str, variables: dict[str, Any], *, html: bool = False) -> str:
    """Render one template string in the sandbox; RenderError on any template failure."""
    env = _HTML_ENV if html else _ENV
    try:
        return env.from_string(text).render(**variables).strip()
    except TemplateError as exc:
        raise RenderError(f"{type(exc).__name__}: {exc}") from exc
