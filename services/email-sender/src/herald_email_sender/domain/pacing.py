"""Token-bucket pacing and a circuit breaker, one of each per relay; time comes from a clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Clock = Callable[[], float]


@dataclass
class Pacer:
    """A token bucket in its GCRA form: each caller reserves the next free slot.

    Reserving is synchronous, so concurrent senders get distinct slots and the achieved rate
    is the configured one however many wait. `rate <= 0` turns pacing off.
    """

    rate: float
    burst: int = 1
    clock: Clock = time.monotonic
    _tat: float = 0.0

    @property
    def enabled(self) -> bool:
        """Whether pacing applies."""
        return self.rate > 0

    def reserve(self) -> float:
        """Reserve a slot; the seconds to wait before using it."""
        if not self.enabled:
            return 0.0
        interval = 1.0 / self.rate
        now = self.clock()
        slot = max(self._tat, now - (max(1, self.burst) - 1) * interval)
        self._tat = slot + interval
        return max(0.0, slot - now)

    async def acquire(self) -> None:
        """Wait for a slot."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)

    def pause(self, seconds: float) -> None:
        """Hold every slot back: the relay asked us to slow down (421, or a Retry-After)."""
        self._tat = max(self._tat, self.clock() + seconds)


BreakerState = Literal["closed", "open", "half-open"]


@dataclass
class CircuitBreaker:
    """Open after `threshold` consecutive failures; after `cooldown` let one trial through."""

    threshold: int = 5
    cooldown: float = 5.0
    clock: Clock = time.monotonic
    failures: int = 0
    _opened_at: float | None = None
    _trial: bool = field(default=False)

    @property
    def state(self) -> BreakerState:
        """closed, open or half-open, now."""
        if self._opened_at is None:
            return "closed"
        if self.clock() - self._opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def wait(self) -> float:
        """0 when a call may go ahead now (and takes the half-open trial); else seconds to wait."""
        state = self.state
        if state == "closed":
            return 0.0
        if state == "half-open" and not self._trial:
            self._trial = True
            return 0.0
        assert self._opened_at is not None
        remaining = self._opened_at + self.cooldown - self.clock()
        return max(remaining, 0.05)

    def success(self) -> None:
        """A call reached the relay and it answered."""
        self.failures = 0
        self._opened_at = None
        self._trial = False

    def failure(self) -> None:
        """The relay was unreachable or failing."""
        self.failures += 1
        if self._trial or self.failures >= self.threshold:
            self._opened_at = self.clock()
        self._trial = False


def backoff(attempt: int, *, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Full-jitter exponential backoff for the n-th retry (1-based)."""
    return float(rand() * min(cap, base * 2 ** (attempt - 1)))
