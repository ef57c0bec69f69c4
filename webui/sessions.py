"""Server-side sessions: the cookie carries only an id that this registry must still know.

Logout forgets one id, "sign out everywhere" forgets them all, and a session older than its
lifetime is gone even if its (signed) cookie is replayed. In memory: a restart (which also
makes a new cookie-signing key) signs everybody out. Lock-protected, bounded, clock injected.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

MAX_SESSIONS = 1000  # beyond this the least recently seen are signed out


@dataclass(frozen=True)
class SessionInfo:
    label: str       # a short hash of the id: safe to show and to log
    address: str
    created: float   # wall clock, for display
    seen: float


def label_of(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()[:10]


class SessionRegistry:
    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.time):
        self.lifetime_s = lifetime_s
        self.clock = clock
        self._lock = threading.Lock()
        self._live: dict[str, SessionInfo] = {}

    def start(self, address: str) -> str:
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._live[sid] = SessionInfo(label_of(sid), address, now, now)
            if len(self._live) > MAX_SESSIONS:
                del self._live[min(self._live, key=lambda s: self._live[s].seen)]
        return sid

    def check(self, sid: object) -> bool:
        """Is ``sid`` a live session? Marks it seen."""
        if not isinstance(sid, str):
            return False
        now = self.clock()
        with self._lock:
            info = self._live.get(sid)
            if info is None:
                return False
            if now - info.created >= self.lifetime_s:
                del self._live[sid]
                return False
            self._live[sid] = SessionInfo(info.label, info.address, info.created, now)
            return True

    def end(self, sid: object) -> None:
        with self._lock:
            self._live.pop(sid, None)  # type: ignore[arg-type]

    def end_all(self) -> int:
        with self._lock:
            count = len(self._live)
            self._live.clear()
            return count

    def live(self) -> list[SessionInfo]:
        now = self.clock()
        with self._lock:
            return sorted((i for i in self._live.values() if now - i.created < self.lifetime_s),
                          key=lambda i: i.seen, reverse=True)
