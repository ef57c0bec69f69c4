"""Per-key behaviours, rate windows, request records and counters of the mock upstream.

One :class:`MockState` is shared by the server's event loop thread and the test thread;
every public method takes its lock (uncontended, so cheap on the hot path).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace

from keypool.redact import mask, scrub

from . import mock_hostile

RESET = 0  # the "status" recorded for a connection closed without an answer


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the mock answers one key (or, as the default, every key without its own).

    ``times`` counts per key, also for the default; ``headers`` go on the scripted
    error answers only and ``ratelimit_headers`` on successful ones.  Replacing a key's
    behaviour restarts its ``times`` count and its ``rpm`` window.
    """

    status: int | None = None        # answer this error status instead of success
    times: int | None = None         # ...only for the next N requests of the key (None = forever)
    for_s: float | None = None       # ...only this many seconds after it was set (an outage)
    quota: bool = False              # 429 body says insufficient_quota
    body: dict | str | None = None   # overrides the error body
    headers: dict = field(default_factory=dict)            # added to the error answer
    reset: bool = False              # close the connection without answering
    echo: tuple = ()                 # hostile upstream: put the raw key in these ECHO_PLACES
    delay_ms: float = 0              # wait before the response headers
    chunk_delay_ms: float = 0        # wait between SSE events
    chunks: int = 5                  # content chunks (= completion tokens)
    rpm: int | None = None           # requests allowed per window...
    window_s: float = 60             # ...of this many seconds (sliding)
    warn: bool = True                # successes say what is left (x-ratelimit-*); False: the
                                     # first word of the limit is a 429 with Retry-After
    ratelimit_headers: dict = field(default_factory=dict)  # added to successful answers
    hostile: str | None = None       # a hostile success instead (see mock_hostile)

    @classmethod
    def build(cls, **kw: object) -> "Behaviour":
        known = {f.name for f in fields(cls)}
        unknown = set(kw) - known
        if unknown:
            raise ValueError(f"unknown behaviour field(s): {', '.join(sorted(unknown))}")
        kw = {k: v for k, v in kw.items()
              if v is not None or k in ("status", "times", "for_s", "body", "rpm")}
        b = cls(**kw)  # type: ignore[arg-type]
        if b.status is not None and not (isinstance(b.status, int) and 400 <= b.status <= 599):
            raise ValueError("status must be an int in 400..599")
        if b.times is not None and (not isinstance(b.times, int) or b.times < 0):
            raise ValueError("times must be a non-negative int or None")
        if b.for_s is not None and (not isinstance(b.for_s, (int, float)) or not b.for_s >= 0):
            raise ValueError("for_s must be a non-negative number or None")
        if not isinstance(b.chunks, int) or b.chunks < 1:
            raise ValueError("chunks must be an int >= 1")
        if b.rpm is not None and (not isinstance(b.rpm, int) or b.rpm < 0):
            raise ValueError("rpm must be a non-negative int or None")
        if b.echo != ():
            b = replace(b, echo=_echo_places(b.echo))
        if not b.window_s > 0:
            raise ValueError("window_s must be > 0")
        for name in ("headers", "ratelimit_headers"):
            if not isinstance(getattr(b, name), dict):
                raise ValueError(f"{name} must be a dict")
        if b.body is not None and not isinstance(b.body, (dict, str)):
            raise ValueError("body must be a dict or a string")
        if b.hostile is not None:
            mock_hostile.check(b.hostile)
        return b


ECHO_PLACES = frozenset({"body", "header", "sse"})  # body: the error or 200 JSON body


def _echo_places(echo: object) -> tuple:
    """``echo`` given as a list (JSON) or one string becomes a tuple of known places."""
    echo = (echo,) if isinstance(echo, str) else echo
    if not isinstance(echo, (list, tuple)) or not set(echo) <= ECHO_PLACES:
        raise ValueError(f"echo must be a list of: {', '.join(sorted(ECHO_PLACES))}")
    return tuple(echo)


OK = Behaviour()


@dataclass(slots=True)
class Decision:
    """What to answer one request, decided atomically under the lock."""
    status: int = 200               # 200 = go on with the endpoint; RESET = drop the connection
    error_headers: dict | None = None
    ok_headers: dict | None = None
    behaviour: Behaviour = OK
    scripted: bool = False          # the error is the behaviour's ``status`` (not the rpm window)


class MockState:
    def __init__(self, max_records: int = 10_000):
        self._lock = threading.Lock()
        self._default = OK
        self._by_key: dict[str, Behaviour] = {}
        self._times_left: dict[tuple[bool, str], int] = {}   # (own behaviour?, key) -> failures left
        self._set_at: dict[str | None, float] = {}  # key (None: the default) -> when set (for_s)
        self._windows: dict[str, deque[float]] = {}
        self._records: deque[dict] = deque(maxlen=max_records)
        self._counts: dict[str | None, dict[int, int]] = {}

    # ------------------------------------------------------------ configuration

    def set_behavior(self, key: str | None, **behaviour: object) -> None:
        b = Behaviour.build(**behaviour)
        with self._lock:
            self._set_at[key] = time.monotonic()
            if key is None:
                self._default = b
                self._times_left = {k: v for k, v in self._times_left.items() if k[0]}
            else:
                self._by_key[key] = b
                self._times_left.pop((True, key), None)
                self._windows.pop(key, None)

    def reset(self) -> None:
        with self._lock:
            self._default = OK
            self._by_key.clear()
            self._times_left.clear()
            self._set_at.clear()
            self._windows.clear()
            self._records.clear()
            self._counts.clear()

    def behaviour(self, key: str) -> Behaviour:
        return self._by_key.get(key, self._default)

    # ------------------------------------------------------------ hot path

    def decide(self, key: str, now: float) -> Decision:
        with self._lock:
            own = key in self._by_key
            b = self._by_key[key] if own else self._default
            if b.status is not None or b.reset:
                fire = b.for_s is None or now - self._set_at.get(key if own else None, now) < b.for_s
                if fire and b.times is not None:
                    left = self._times_left.get((own, key), b.times)
                    fire = left > 0
                    if fire:
                        self._times_left[(own, key)] = left - 1
                if fire:
                    if b.reset:
                        return Decision(RESET, behaviour=b)
                    return Decision(b.status, error_headers=b.headers, behaviour=b, scripted=True)  # type: ignore[arg-type]
            ok_headers = b.ratelimit_headers or None
            if b.rpm is not None:
                win = self._windows.get(key)
                if win is None:
                    win = self._windows[key] = deque()
                horizon = now - b.window_s
                while win and win[0] <= horizon:
                    win.popleft()
                if len(win) >= b.rpm:
                    wait = (win[0] + b.window_s - now) if win else b.window_s
                    retry = max(1, math.ceil(wait))
                    return Decision(429, behaviour=b, error_headers={
                        "retry-after": str(retry), "x-ratelimit-limit-requests": str(b.rpm),
                        "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": f"{retry}s"})
                win.append(now)
                if not b.warn:
                    return Decision(200, ok_headers=b.ratelimit_headers or None, behaviour=b)
                # Like OpenAI: how many are left, and when the window frees the oldest slot.
                reset = win[0] + b.window_s - now
                ok_headers = {"x-ratelimit-limit-requests": str(b.rpm),
                              "x-ratelimit-remaining-requests": str(b.rpm - len(win)),
                              "x-ratelimit-reset-requests": f"{reset:.3f}s", **b.ratelimit_headers}
            return Decision(200, ok_headers=ok_headers, behaviour=b)

    def record(self, rec: dict) -> None:
        key, status = rec["key"], rec["status"]
        with self._lock:
            self._records.append(rec)
            per = self._counts.get(key)
            if per is None:
                per = self._counts[key] = {}
            per[status] = per.get(status, 0) + 1

    # ------------------------------------------------------------ queries

    def requests(self, key: str | None = None) -> list[dict]:
        with self._lock:
            recs = list(self._records)
        return recs if key is None else [r for r in recs if r["key"] == key]

    def count(self, key: str | None = None, status: int | None = None) -> int:
        with self._lock:
            pers = list(self._counts.values()) if key is None else [self._counts.get(key, {})]
            return sum(n for per in pers for s, n in per.items() if status is None or s == status)

    def stats(self) -> dict:
        """Per-key counters with the keys masked (for GET /_mock/stats)."""
        out: dict[str, dict] = {}
        with self._lock:
            items = [(k, dict(v)) for k, v in self._counts.items()]
        for key, per in items:
            slot = out.setdefault("(none)" if key is None else mask(key), {"total": 0, "by_status": {}})
            for status, n in per.items():
                slot["total"] += n
                slot["by_status"][str(status)] = slot["by_status"].get(str(status), 0) + n
        return {"total": sum(s["total"] for s in out.values()), "keys": out}

    def masked_requests(self, limit: int) -> list[dict]:
        """The newest ``limit`` records, oldest first, with every credential masked."""
        with self._lock:
            recs = list(self._records)[-limit:] if limit > 0 else []
        return [masked_record(r) for r in recs]


_AUTH_HEADERS = {"authorization", "x-api-key", "x-goog-api-key", "api-key", "proxy-authorization"}


def _mask_header(name: str, value: str, secrets: list[str]) -> str:
    if name in _AUTH_HEADERS:
        scheme, _, rest = value.partition(" ")
        return f"{scheme} {mask(rest)}" if rest else mask(value)
    return scrub(value, secrets)


def masked_record(r: dict) -> dict:
    secrets = [r["key"]] if r["key"] else []
    pairs = [(n, _mask_header(n, v, secrets)) for n, v in r["header_list"]]
    return {**r, "key": mask(r["key"]) if r["key"] else None, "path": scrub(r["path"], secrets),
            "header_list": pairs, "headers": dict(pairs)}
