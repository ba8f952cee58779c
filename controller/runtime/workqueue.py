"""A rate-limited work queue of keys, in the manner of client-go's workqueue.

Guarantees:
- Fair: keys are handed out in the order they were first added (FIFO).
- Stingy: a key added several times before it is processed is processed once (the `_dirty` set).
- Exclusive: a key is never handed to two workers at once. A key added while it is being processed (it is in
  `_processing`) is queued again only when `done()` is called for it, so no change is lost.
- Delayed adds (`add_after`) hold a key until its time has come; the earliest pending time wins when the same key
  is delayed twice.
- `add_rate_limited` delays a key by its rate limiter's answer (per-key exponential backoff combined with an
  overall token bucket); `forget` resets the key's backoff.
- `shutdown()` wakes every waiting `get()`, which then returns None; `shutdown(drain=True)` first waits until the
  keys being processed are done.
- The clock is injectable: tests drive delays and backoff with a fake clock (a waiting `get()` polls it).

Metrics hooks (`on_add`, `on_get`, `on_done`, `on_retry`, `on_depth`) let the metrics layer observe depth,
latency and work duration without this module importing it; `unfinished_work_seconds()` and
`longest_running_seconds()` are read at scrape time.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)


class Clock(Protocol):
    def now(self) -> float: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


class RateLimiter(Protocol[K_contra]):
    def when(self, key: K_contra) -> float: ...

    def forget(self, key: K_contra) -> None: ...

    def retries(self, key: K_contra) -> int: ...


class ExponentialBackoff(Generic[K]):
    """Per-key delay base * 2**failures, capped at max_delay."""

    def __init__(self, base: float = 0.005, max_delay: float = 1000.0):
        self.base = base
        self.max_delay = max_delay
        self._failures: dict[K, int] = {}
        self._lock = threading.Lock()

    def when(self, key: K) -> float:
        with self._lock:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        if failures > 60:
            return self.max_delay
        return float(min(self.base * (2**failures), self.max_delay))

    def forget(self, key: K) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def retries(self, key: K) -> int:
        with self._lock:
            return self._failures.get(key, 0)


class BucketLimiter(Generic[K]):
    """An overall limit: `qps` retries per second with bursts of `burst`, shared by all keys."""

    def __init__(self, qps: float = 10.0, burst: int = 100, clock: Clock | None = None):
        self.qps = qps
        self.burst = burst
        self._clock = clock or MonotonicClock()
        self._tokens = float(burst)
        self._last = self._clock.now()
        self._lock = threading.Lock()

    def when(self, key: K) -> float:
        with self._lock:
            now = self._clock.now()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def forget(self, key: K) -> None:
        pass

    def retries(self, key: K) -> int:
        return 0


class MaxOfLimiter(Generic[K]):
    """The longest delay any of its limiters asks for (client-go's default controller rate limiter)."""

    def __init__(self, *limiters: RateLimiter[K]):
        self.limiters = limiters

    def when(self, key: K) -> float:
        return max(limiter.when(key) for limiter in self.limiters)

    def forget(self, key: K) -> None:
        for limiter in self.limiters:
            limiter.forget(key)

    def retries(self, key: K) -> int:
        return max(limiter.retries(key) for limiter in self.limiters)


def default_rate_limiter(clock: Clock | None = None) -> MaxOfLimiter[K]:
    return MaxOfLimiter(ExponentialBackoff(0.005, 1000.0), BucketLimiter(10.0, 100, clock))


def jittered(seconds: float, factor: float = 0.1) -> float:
    """`seconds` plus up to `factor` of itself, at random."""
    return seconds * (1.0 + random.random() * factor)


@dataclass(order=True)
class _Delayed(Generic[K]):
    ready_at: float
    seq: int
    key: K = field(compare=False)


class WorkQueue(Generic[K]):
    """See the module docstring for the guarantees."""

    def __init__(
        self,
        *,
        name: str = "",
        rate_limiter: RateLimiter[K] | None = None,
        clock: Clock | None = None,
        on_add: Callable[[K], None] | None = None,
        on_get: Callable[[K, float], None] | None = None,
        on_done: Callable[[K, float], None] | None = None,
        on_retry: Callable[[K], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ):
        self.name = name
        self._clock = clock or MonotonicClock()
        self.rate_limiter: RateLimiter[K] = rate_limiter or default_rate_limiter(self._clock)
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: dict[K, float] = {}
        self._added_at: dict[K, float] = {}
        self._waiting: list[_Delayed[K]] = []
        self._waiting_at: dict[K, float] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._shutting_down = False
        self._on_add = on_add
        self._on_get = on_get
        self._on_done = on_done
        self._on_retry = on_retry
        self._on_depth = on_depth

    # -- adding ---------------------------------------------------------------------------------------------------

    def add(self, key: K) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: K) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        self._added_at.setdefault(key, self._clock.now())
        if self._on_add:
            self._on_add(key)
        if key in self._processing:
            return
        self._queue.append(key)
        self._depth_changed()
        self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutting_down:
                return
            ready_at = self._clock.now() + delay
            current = self._waiting_at.get(key)
            if current is not None and current <= ready_at:
                return
            self._waiting_at[key] = ready_at
            heapq.heappush(self._waiting, _Delayed(ready_at, next(self._seq), key))
            self._cond.notify_all()

    def add_rate_limited(self, key: K) -> None:
        if self._on_retry:
            self._on_retry(key)
        self.add_after(key, self.rate_limiter.when(key))

    def forget(self, key: K) -> None:
        self.rate_limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        return self.rate_limiter.retries(key)

    # -- taking ---------------------------------------------------------------------------------------------------

    def _promote_ready_locked(self) -> float | None:
        """Move due delayed keys into the queue; return seconds until the next one is due (None if none)."""
        now = self._clock.now()
        while self._waiting:
            head = self._waiting[0]
            if self._waiting_at.get(head.key) != head.ready_at:
                heapq.heappop(self._waiting)  # superseded by an earlier time, or already promoted
                continue
            if head.ready_at > now:
                return head.ready_at - now
            heapq.heappop(self._waiting)
            del self._waiting_at[head.key]
            self._add_locked(head.key)
        return None

    def get(self, timeout: float | None = None) -> K | None:
        """Block until a key is ready and return it; None on shutdown or timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._shutting_down:
                    return None
                next_due = self._promote_ready_locked()
                if self._queue:
                    key = self._queue.popleft()
                    self._dirty.discard(key)
                    now = self._clock.now()
                    self._processing[key] = now
                    added = self._added_at.pop(key, now)
                    self._depth_changed()
                    if self._on_get:
                        self._on_get(key, now - added)
                    return key
                wait = next_due
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait = remaining if wait is None else min(wait, remaining)
                # A fake clock does not advance while we sleep: poll it at a short interval.
                if not isinstance(self._clock, MonotonicClock) and self._waiting:
                    wait = 0.01 if wait is None else min(wait, 0.01)
                self._cond.wait(wait)

    def done(self, key: K) -> None:
        with self._cond:
            started = self._processing.pop(key, None)
            if started is not None and self._on_done:
                self._on_done(key, self._clock.now() - started)
            if key in self._dirty and not self._shutting_down:
                self._queue.append(key)
                self._depth_changed()
                self._cond.notify()
            elif not self._processing:
                self._cond.notify_all()

    # -- state ----------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def pending_delayed(self) -> int:
        with self._cond:
            return len(self._waiting_at)

    def processing(self) -> int:
        with self._cond:
            return len(self._processing)

    def unfinished_work_seconds(self) -> float:
        """How long the keys being processed have been at it, added up."""
        with self._cond:
            now = self._clock.now()
            return sum(now - started for started in self._processing.values())

    def longest_running_seconds(self) -> float:
        """How long the longest-running key being processed has been at it (0 when idle)."""
        with self._cond:
            if not self._processing:
                return 0.0
            return self._clock.now() - min(self._processing.values())

    def _depth_changed(self) -> None:
        if self._on_depth:
            self._on_depth(len(self._queue))

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def shutdown(self, drain: bool = False, timeout: float | None = None) -> bool:
        """Stop handing out keys. With drain, wait (up to timeout) for keys being processed; True if drained."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._shutting_down = True
            self._waiting.clear()
            self._waiting_at.clear()
            self._cond.notify_all()
            if not drain:
                return True
            while self._processing:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True
