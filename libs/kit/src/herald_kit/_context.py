"""Correlation: the W3C trace context and the CloudEvent id being handled, per task."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

# A traceparent's version, trace id, parent id and flags: lower-case hex of these lengths.
_PARTS = tuple(re.compile(f"[0-9a-f]{{{n}}}") for n in (2, 32, 16, 2))


def _span_id() -> str:
    # Trace and span ids need to be unique, not secret: like OpenTelemetry's RandomIdGenerator,
    # take them from `random` (an os.urandom read per id cost a syscall per published event).
    # All zeros is invalid in W3C trace context.
    return f"{random.getrandbits(64) or 1:016x}"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A W3C traceparent split into its parts."""

    trace_id: str
    span_id: str

    def header(self) -> str:
        """The traceparent header value."""
        return f"00-{self.trace_id}-{self.span_id}-01"

    def child(self) -> TraceContext:
        """A new span in the same trace."""
        return TraceContext(self.trace_id, _span_id())

    @classmethod
    def new(cls) -> TraceContext:
        """A fresh trace."""
        return cls(f"{random.getrandbits(128) or 1:032x}", _span_id())

    @classmethod
    def parse(cls, value: str | None) -> TraceContext | None:
        """Parse a traceparent; None when absent or malformed."""
        if not value:
            return None
        parts = value.strip().split("-")
        # Lower-case hex digits of the exact lengths, as W3C writes them: not int(p, 16),
        # which takes spaces, '0x', '_', a sign and other scripts' digits too.
        if len(parts) < 4:
            return None
        if not all(p.fullmatch(part) for p, part in zip(_PARTS, parts[:4], strict=True)):
            return None
        if parts[0] == "ff" or (parts[0] == "00" and len(parts) != 4):
            return None  # ff is no version; version 00 has exactly four parts
        if not parts[1].strip("0") or not parts[2].strip("0"):
            return None  # all zeros: invalid in W3C trace context
        return cls(parts[1], parts[2])


trace_var: ContextVar[TraceContext | None] = ContextVar("herald_trace", default=None)
event_id_var: ContextVar[str | None] = ContextVar("herald_event_id", default=None)


def current_trace() -> TraceContext:
    """The trace being handled, or a new one."""
    return trace_var.get() or TraceContext.new()


def current_traceparent() -> str | None:
    """The traceparent of the trace being handled, to keep with work finished later (a timer
    row, a send-ledger row); None when no trace is being handled."""
    trace = trace_var.get()
    return trace.header() if trace is not None else None


@contextmanager
def continued(traceparent: str | None) -> Iterator[TraceContext]:
    """Handle what follows in the trace a kept traceparent names: work that finishes later
    (a timer that fires, a provider's status callback) stays in the trace that started it.

    A row kept before it had a traceparent (or a malformed one) goes on in the trace being
    handled, else in a new one, so the records and log lines of that one piece of work still
    share a trace.
    """
    trace = TraceContext.parse(traceparent) or current_trace()
    token = trace_var.set(trace)
    try:
        yield trace
    finally:
        trace_var.reset(token)
