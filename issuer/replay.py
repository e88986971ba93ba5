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

from .storage import Database

__all__ = ["DatabaseReplayStore", "MemoryReplayStore", "ReplayStore"]


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
