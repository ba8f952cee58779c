"""A clock for tests of the work queue, rate limiters, controllers and leader election."""

from __future__ import annotations

import threading


class FakeClock:
    """A `rayop.runtime.workqueue.Clock` that moves only when told to."""

    def __init__(self, start: float = 1000.0):
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def step(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
