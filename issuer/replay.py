"""Single-use stores for client assertion ``jti`` values (RFC 7523 section 3).

``MemoryReplayStore`` serves one process; ``DatabaseReplayStore`` is shared by
every worker and instance that uses the same database. Both remember when
they started: an assertion issued before that moment could have been used
against a store that has since been forgotten, so it is refused.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from .storage import Database, StoreUnavailable

__all__ = [
    "DatabaseReplayStore",
    "MemoryReplayStore",
    "RedisReplayStore",
    "ReplayStore",
]


class ReplayStore(Protocol):
    """Records identifiers that may be used once."""

    started_at: float

    def use_once(self, key: str, expires_at: float) -> bool:
        """Record ``key`` until ``expires_at``; return False if seen before."""


class MemoryReplayStore:
    """Process-local store; entries are dropped once expired.

    Memory grows with the number of distinct unexpired keys, which the
    assertion lifetime limit bounds (a few minutes of traffic).
    """

    def __init__(self) -> None:
        self.started_at = time.time()
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_sweep = self.started_at + 60

    def use_once(self, key: str, expires_at: float) -> bool:
        now = time.time()
        with self._lock:
            if now >= self._next_sweep:
                self._seen = {k: e for k, e in self._seen.items() if e >= now}
                self._next_sweep = now + 60
            previous = self._seen.get(key)
            if previous is not None and previous >= now:
                return False
            self._seen[key] = expires_at
            return True


class RedisReplayStore:
    """Store shared through Redis: ``SET key 1 NX EXAT expiry`` is atomic, so
    exactly one worker or instance wins each key. Keys live under
    ``prefix`` and expire by themselves.

    Redis keeps entries until they expire, so ``started_at`` is 0. A Redis
    that lost its data (restarted without persistence) forgets used ids:
    run it with persistence, or accept that assertions issued before the
    restart may be replayed within their lifetime (at most
    ``max_assertion_lifetime``).
    """

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.started_at = 0.0
        self._prefix = prefix
        self._redis = redis.Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2
        )

    def use_once(self, key: str, expires_at: float) -> bool:
        import redis

        try:
            created = self._redis.set(
                self._prefix + key, b"1", nx=True, exat=max(int(expires_at) + 1, 1)
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        return bool(created)

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` when Redis cannot be reached."""
        import redis

        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc


class DatabaseReplayStore:
    """Store shared through the ``used_jtis`` table.

    Its start is the table's: it never forgets before entries expire, so
    ``started_at`` is 0.
    """

    def __init__(self, db: Database) -> None:
        self.started_at = 0.0
        self._db = db

    def use_once(self, key: str, expires_at: float) -> bool:
        return self._db.use_once(key, expires_at)
