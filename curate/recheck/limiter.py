"""A calls-per-hour limiter for one API key: calls are spaced evenly (no bursts), which is what a budget such as
Flickr's ~3,600 calls an hour per key asks of a client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        calls_per_hour: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if calls_per_hour <= 0:
            raise ValueError(f"calls_per_hour must be > 0, not {calls_per_hour}")
        self.interval = 3600.0 / calls_per_hour
        self._clock, self._sleep = clock, sleep
        self._next = clock()
        self._lock = threading.Lock()
        self.calls = 0

    def wait(self) -> None:
        """Block until the next call is within the budget, then count it."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
            self.calls += 1
        if start > now:
            self._sleep(start - now)
