"""Correlation: the W3C trace context and the CloudEvent id being handled, per task."""

from __future__ import annotations

import random
from contextvars import ContextVar
from dataclasses import dataclass


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
        if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
            return None
        try:
            int(parts[1], 16)
            int(parts[2], 16)
        except ValueError:
            return None
        return cls(parts[1], parts[2])


trace_var: ContextVar[TraceContext | None] = ContextVar("herald_trace", default=None)
event_id_var: ContextVar[str | None] = ContextVar("herald_event_id", default=None)


def current_trace() -> TraceContext:
    """The trace being handled, or a new one."""
    return trace_var.get() or TraceContext.new()
