"""Pacing, backoff and a circuit breaker: how a sender stays within what a provider allows."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from herald_kit._kafka import PartitionShare
from herald_kit._metrics import (
    BREAKER_OPENED,
    BREAKER_STATE,
    PACER_HOLDS,
    PACER_RATE,
    PACER_TOKENS,
    PACER_WAIT,
)


@dataclass
class _Schedule:
    """GCRA state of one sender identity: the theoretical arrival time of the next send."""

    tat: float = 0.0
    hold_until: float = 0.0


class Pacer:
    """A token bucket per sender identity (a phone number, a messaging service, a caller id).

    Implemented as GCRA: each send reserves the next slot `1/rate` after the previous one, so
    concurrent senders queue in order and the long-run rate is exactly `rate`; `burst` sends
    may go back to back after an idle spell. A rate of 0 turns pacing off.
    With a `name` (the sender's service name) it exports its waits, holds, rate and tokens.

    `rate` and `burst` are what the provider allows all replicas of a sender together, and
    every replica paces alone (no round trip to share state per send). So a pacer that follows
    the consumer groups feeding it (`follow`) paces at its share of the rate: the part of
    those groups' partitions this replica owns, updated on every rebalance. The group divides
    the partitions among the replicas, so the shares add up to the whole rate however many
    run (an autoscaler's included); a replica owning no partition sends nothing.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        name: str | None = None,
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._ids: dict[str, _Schedule] = {}
        # Partitions owned and in all, per consumer group followed; none followed: the whole.
        self._shares: dict[str, tuple[int, int]] = {}
        self.share = 1.0
        self._reshared = asyncio.Event()  # set (and replaced) when the share changes
        self.name = name
        if name is not None:
            PACER_RATE.labels(name).set(rate)
            PACER_TOKENS.labels(name).set_function(self.tokens)

    @property
    def effective_rate(self) -> float:
        """This replica's part of the rate (the whole rate when following no group)."""
        return self.rate * self.share

    @property
    def _burst(self) -> int:
        # The burst is divided like the rate, but one send back to back is always allowed.
        return max(1, int(self.burst * self.share))

    def follow(self, share: PartitionShare) -> None:
        """A consumer group feeding this pacer was rebalanced: pace at the share of the
        followed groups' partitions this replica now owns (all groups weigh by their
        partitions, so the replicas' shares still add up to one)."""
        self._shares[share.group] = (share.owned, share.total)
        owned = sum(o for o, _ in self._shares.values())
        total = sum(t for _, t in self._shares.values())
        self.share = owned / total if total > 0 else 0.0
        if self.name is not None:
            PACER_RATE.labels(self.name).set(self.effective_rate)
        self._reshared.set()  # waiters for a share of their own look again
        self._reshared = asyncio.Event()

    def tokens(self) -> float:
        """Sends the fullest identity's bucket allows back to back now (`burst` when idle)."""
        if self.rate <= 0:
            return float(self.burst)
        rate = self.effective_rate
        if rate <= 0:
            return 0.0
        burst = self._burst
        now = self._clock()
        if not self._ids:
            return float(burst)
        best = 0.0
        for s in self._ids.values():
            if s.hold_until > now:
                continue
            backlog = max(0.0, s.tat - now) * rate  # slots already reserved ahead
            best = max(best, burst - backlog)
        return max(0.0, min(float(burst), best))

    def reserve(self, identity: str) -> float:
        """Reserve a slot for one send; the seconds to wait before using it (infinite, and
        nothing reserved, while this replica has no share of the rate)."""
        now = self._clock()
        if self.rate > 0 and self.effective_rate <= 0:
            return math.inf
        s = self._ids.setdefault(identity, _Schedule(tat=now))
        if self.rate <= 0:
            return max(0.0, s.hold_until - now)  # unpaced, but a Retry-After still holds
        interval = 1.0 / self.effective_rate
        tat = max(s.tat, now)
        wait = max(0.0, tat - (self._burst - 1) * interval - now)
        s.tat = tat + interval
        return wait

    def ready(self, identity: str) -> bool:
        """True when a send for this identity would go at once: pacing off and no hold."""
        if self.rate > 0:
            return False
        s = self._ids.get(identity)
        return s is None or s.hold_until <= self._clock()

    async def acquire(self, identity: str) -> bool:
        """Wait for this identity's next slot; whether there was anything to wait for (False:
        the slot was free, and the caller went on at once)."""
        waited = False
        while math.isinf(wait := self.reserve(identity)):
            # No partition here, so no part of the rate: wait for a rebalance to give some (a
            # record left from a revoked partition is redelivered to its new owner meanwhile).
            await self._reshared.wait()
            waited = True
        if self.name is not None:
            PACER_WAIT.labels(self.name).observe(wait)
        if wait > 0:
            await self._sleep(wait)  # type: ignore[misc]
        return waited or wait > 0

    def hold(self, identity: str, seconds: float) -> None:
        """The provider said 429 / Retry-After: no slot for this identity before then."""
        if self.name is not None:
            PACER_HOLDS.labels(self.name).inc()
        now = self._clock()
        s = self._ids.setdefault(identity, _Schedule(tat=now))
        # GCRA lets `burst - 1` slots go early; a Retry-After allows none before its time.
        rate = self.effective_rate
        early = (self._burst - 1) / rate if rate > 0 else 0.0
        s.tat = max(s.tat, now + seconds + early)
        s.hold_until = max(s.hold_until, now + seconds)


def backoff(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rand: Callable[[float, float], float] = random.uniform,
) -> float:
    """Full-jitter exponential backoff for attempt n (1-based), never sooner than Retry-After."""
    delay = rand(0, min(cap, base * 2 ** (attempt - 1)))
    return max(delay, retry_after or 0.0)


@dataclass
class CircuitBreaker:
    """Stops calling a provider that keeps failing; lets one trial through after a cool-down.

    closed -> (threshold consecutive failures) -> open for `cooldown` s -> half-open: the first
    caller tries; success closes, failure re-opens. A trial that ends without a verdict (the
    message was claimed elsewhere before it went out, a database error, a cancellation) must
    be handed back with `release()`, or every later caller waits for a verdict that never
    comes. With a `name` (the sender's service name) it exports its state and how often it
    opened.
    """

    threshold: int = 20
    cooldown: float = 5.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    name: str | None = None
    _trial: bool = field(default=False, repr=False)
    # The task that took the trial: only its release() hands the trial back.
    _trial_holder: object | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name is not None:
            BREAKER_STATE.labels(self.name).set_function(
                lambda: {"closed": 0.0, "half-open": 1.0, "open": 2.0}[self.state]
            )

    @property
    def state(self) -> str:
        """closed, open or half-open."""
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at < self.cooldown:
            return "open"
        return "half-open"

    def wait(self) -> float:
        """0 when a call may go ahead now, else the seconds until it may."""
        state = self.state
        if state == "closed":
            return 0.0
        if state == "open":
            assert self.opened_at is not None
            return self.cooldown - (self.clock() - self.opened_at)
        if self._trial:
            return min(1.0, self.cooldown)  # a trial is in flight; others wait for its verdict
        self._trial = True
        self._trial_holder = _current_task()
        return 0.0

    def release(self) -> None:
        """The caller's attempt ends without a verdict on the provider: if it was the half-open
        trial, the next caller tries instead. A no-op after success() or failure(), and for a
        task that did not take the trial, so it belongs in a `finally` around every attempt."""
        if self._trial and self._trial_holder is _current_task():
            self._trial = False
            self._trial_holder = None

    def success(self) -> None:
        """A call succeeded: close."""
        self.failures = 0
        self.opened_at = None
        self._trial = False
        self._trial_holder = None

    def failure(self) -> None:
        """A call failed in a way that blames the provider (5xx, timeout)."""
        self.failures += 1
        if self._trial or self.failures >= self.threshold:
            if self.name is not None and (self.opened_at is None or self._trial):
                BREAKER_OPENED.labels(self.name).inc()
            self.opened_at = self.clock()
        self._trial = False
        self._trial_holder = None


def _current_task() -> object | None:
    """The running task; None for a caller outside an event loop."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
