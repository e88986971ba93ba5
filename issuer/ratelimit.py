"""Per-client request rate limits (token bucket), per worker process.

Each worker keeps its own buckets, so with N workers a client can reach N
times the configured rate; the limit guards against a runaway client, not
against a distributed attack. Memory grows with the number of distinct
clients seen, one small entry each.
"""

from __future__ import annotations

import threading
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """Allows ``rate`` requests per second per key with bursts of ``burst``.

    ``rate`` 0 disables the limit.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> float:
        """Take one token for ``key``; return 0 when allowed, else the seconds
        to wait before the next request would be allowed."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
