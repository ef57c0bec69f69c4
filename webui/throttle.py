"""Login throttling that holds under parallel guessing.

One lock-protected limiter per app, shared by every request thread, keyed per client address
and once more globally. A guess *reserves* its slot before the secret is checked (it counts as
a failure until it succeeds), so 200 parallel guesses cannot all slip through before the first
failure is recorded. Nothing sleeps: a refused guess is answered at once with 429 and how long
to wait (``Retry-After``).

Per bucket: the first ``free`` failures in a window pass, then each needs a growing pause after
the previous one (``base`` doubling up to ``cap``), and ``limit`` failures lock the bucket until
its window ends. A success clears the address's bucket and takes its reservation back from the
global one. Pure: no Flask; the clock is injected.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Policy:
    free: int       # failures that need no pause
    base: float     # the pause after the first failure past ``free`` (seconds), doubling
    cap: float      # the longest pause
    limit: int      # failures that lock the bucket for the rest of its window
    window: float   # seconds from a bucket's first failure until it is forgotten


PER_ADDRESS = Policy(free=3, base=1.0, cap=60.0, limit=10, window=15 * 60)
GLOBAL = Policy(free=30, base=0.25, cap=5.0, limit=100, window=15 * 60)
MAX_ADDRESSES = 10_000  # beyond this, forgotten oldest first (the global bucket still holds)


@dataclass
class _Bucket:
    first: float
    last: float
    failures: int = 0

    def wait(self, now: float, policy: Policy) -> float:
        if self.failures >= policy.limit:
            return self.first + policy.window - now
        if self.failures < policy.free:
            return 0.0
        pause = min(policy.base * 2 ** (self.failures - policy.free), policy.cap)
        return self.last + pause - now


class LoginLimiter:
    def __init__(self, per_address: Policy = PER_ADDRESS, overall: Policy = GLOBAL,
                 clock: Callable[[], float] = time.monotonic):
        self.per_address = per_address
        self.overall = overall
        self.clock = clock
        self._lock = threading.Lock()
        self._addresses: dict[str, _Bucket] = {}
        self._global: _Bucket | None = None

    def acquire(self, address: str) -> int:
        """Reserve one guess for ``address``: 0 if it may be checked now, else the seconds to
        wait (at least 1). A reserved guess counts as a failure until :meth:`succeeded`."""
        with self._lock:
            now = self.clock()
            mine = self._fresh(self._addresses.get(address), now, self.per_address)
            overall = self._fresh(self._global, now, self.overall)
            wait = max(mine.wait(now, self.per_address), overall.wait(now, self.overall))
            if wait > 0:
                return max(1, math.ceil(wait))
            for bucket in (mine, overall):
                bucket.failures += 1
                bucket.last = now
            self._addresses[address] = mine
            self._global = overall
            self._bound(now)
            return 0

    def succeeded(self, address: str) -> None:
        """The reserved guess was right: the address starts afresh, the global count forgets it."""
        with self._lock:
            self._addresses.pop(address, None)
            if self._global is not None and self._global.failures > 0:
                self._global.failures -= 1

    def failures(self, address: str | None = None) -> int:
        with self._lock:
            bucket = self._global if address is None else self._addresses.get(address)
            return bucket.failures if bucket else 0

    @staticmethod
    def _fresh(bucket: _Bucket | None, now: float, policy: Policy) -> _Bucket:
        if bucket is None or now - bucket.first >= policy.window:
            return _Bucket(first=now, last=now)
        return bucket

    def _bound(self, now: float) -> None:
        if len(self._addresses) <= MAX_ADDRESSES:
            return
        window = self.per_address.window
        self._addresses = {a: b for a, b in self._addresses.items() if now - b.first < window}
        while len(self._addresses) > MAX_ADDRESSES:
            del self._addresses[min(self._addresses, key=lambda a: self._addresses[a].last)]
