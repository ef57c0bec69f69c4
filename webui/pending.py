"""Small server-side memories of the UI process.

``PendingImports``: imports waiting for the user's confirmation. The preview page shows
masked keys only; the secrets stay here under a random id until the user confirms (or ten
minutes pass), so they never travel to the browser and back.
``TTLCache``: store queries the dashboard polls (p95, today's totals), recomputed at most
every few seconds however many browsers poll.
"""
from __future__ import annotations

import secrets
import threading
import time
from typing import Any, Callable

TTL_S = 600.0
MAX_PENDING = 32


class PendingImports:
    def __init__(self, ttl_s: float = TTL_S):
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def put(self, value: Any) -> str:
        ident = secrets.token_urlsafe(16)
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            while len(self._items) >= MAX_PENDING:
                self._items.pop(next(iter(self._items)))
            self._items[ident] = (now, value)
        return ident

    def take(self, ident: str) -> Any | None:
        """The value, once: a second confirmation of the same preview finds nothing."""
        with self._lock:
            self._expire(time.monotonic())
            item = self._items.pop(ident, None)
        return item[1] if item else None

    def _expire(self, now: float) -> None:
        for ident in [i for i, (t, _) in self._items.items() if now - t > self.ttl_s]:
            del self._items[ident]


class TTLCache:
    def __init__(self, ttl_s: float = 5.0):
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit and now - hit[0] < self.ttl_s:
                return hit[1]
        value = compute()
        with self._lock:
            if len(self._items) > 64:
                self._items.clear()
            self._items[key] = (now, value)
        return value
