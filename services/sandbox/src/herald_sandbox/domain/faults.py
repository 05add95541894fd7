"""Behaviour the sandbox can be told to show: a per-number rate limit and injected faults."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Literal

FaultKind = Literal[
    "server-error",
    "unavailable",
    "timeout",
    "bad-gateway",
    "undelivered",
    "machine",
    "busy",
    "no-answer",
    "failed",
]


@dataclass(frozen=True, slots=True)
class FaultRule:
    """Inject `kind` into a `share` of the matching requests (numbers starting with `to_prefix`)."""

    kind: FaultKind
    share: float
    to_prefix: str = ""


@dataclass
class TokenBucket:
    """A token bucket: `rate` tokens a second, at most `burst` banked."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Behaviour:
    """Rate limit per sending number and fault rules, changeable at runtime."""

    def __init__(
        self, *, rate_per_number: float = 0.0, enforce_opt_out: bool = True, seed: int | None = None
    ) -> None:
        self.rate_per_number = rate_per_number
        # Twilio refuses (21610) to message a number that texted STOP; off, the sandbox accepts
        # it, so a test can see whether a sender honours STOP on its own.
        self.enforce_opt_out = enforce_opt_out
        self.burst = max(1.0, rate_per_number)
        self.rules: list[FaultRule] = []
        self.timeout_seconds = 5.0
        self._buckets: dict[str, TokenBucket] = {}
        self._random = random.Random(seed)  # noqa: S311 - fault injection, not crypto
        self.rejected_429 = 0
        self.injected: dict[str, int] = {}  # fault kind -> requests it was injected into

    def configure(
        self,
        *,
        rate_per_number: float | None = None,
        burst: float | None = None,
        rules: list[FaultRule] | None = None,
        timeout_seconds: float | None = None,
        enforce_opt_out: bool | None = None,
        seed: int | None = None,
    ) -> None:
        """Change what the sandbox does from now on; counters and buckets start afresh."""
        if rate_per_number is not None:
            self.rate_per_number = rate_per_number
            self.burst = burst if burst is not None else max(1.0, rate_per_number)
        elif burst is not None:
            self.burst = burst
        if rules is not None:
            self.rules = rules
        if timeout_seconds is not None:
            self.timeout_seconds = timeout_seconds
        if enforce_opt_out is not None:
            self.enforce_opt_out = enforce_opt_out
        if seed is not None:
            self._random.seed(seed)
        self._buckets.clear()
        self.rejected_429 = 0
        self.injected = {}

    def admit(self, sender: str) -> float:
        """0 when the sending number is within its rate, else the Retry-After in seconds."""
        if self.rate_per_number <= 0:
            return 0.0
        bucket = self._buckets.get(sender)
        if bucket is None:
            bucket = self._buckets[sender] = TokenBucket(self.rate_per_number, self.burst)
        wait = bucket.take(time.monotonic())
        if wait:
            self.rejected_429 += 1
        return wait

    def fault(self, to: str, kinds: tuple[FaultKind, ...]) -> FaultKind | None:
        """The fault to inject into this request, if a rule of one of `kinds` fires."""
        roll = self._random.random()
        acc = 0.0
        for rule in self.rules:
            if rule.kind not in kinds or not to.startswith(rule.to_prefix):
                continue
            acc += rule.share
            if roll < acc:
                self.injected[rule.kind] = self.injected.get(rule.kind, 0) + 1
                return rule.kind
        return None
