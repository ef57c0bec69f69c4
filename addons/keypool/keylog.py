"""Log lines for key state changes, and why a key is held back.

The pool and the gateway call ``KeyLog`` only when a key's state *changes* (a scope starts
cooling, a key is found dead, a learned budget starts holding it back, a probe goes out, a
probe succeeds): nothing runs per request otherwise. Lines name keys, never secrets.

A storm of 429s must not become thousands of lines: at most ``burst`` lines are written per
``window_s``; the rest are counted and summed up in one line when the window ends
(``… and 312 more key state changes in the last 10 s``), written by the next event or by
``flush()``, which the addon calls from its periodic task.

``held_back(key, now)`` says why a key cannot take a request now and for how long: the
reasons ``/_keymux/stats`` shows (``held_back``), ``keymux.keys`` and the web UI read.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from .clock import Clock

logger = logging.getLogger("keymux")

DEAD = ("auth", "quota")
# Recoveries and probes are good news, logged a step above INFO: mitmproxy calls this level
# ALERT, and `keymux run` shows it (termlog_verbosity=alert) without the per-connection INFO.
NOTICE = logging.INFO + 1
# which status each outcome stands for, when the caller does not know the exact one
_WORDS = {"rate_limited": "rate limited", "server": "server error", "auth": "rejected",
          "quota": "out of quota", "client_error": "client error"}


def _secs(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def _scope(model: str) -> str:
    return f" for {model}" if model else ""


class KeyLog:
    """Writes one rate-limited line per key state change (see the module docstring)."""

    def __init__(self, clock: Clock, *, window_s: float = 10.0, burst: int = 20,
                 emit: Callable[[int, str], None] | None = None):
        self.clock = clock
        self.window_s, self.burst = window_s, burst
        self.emit = emit or (lambda level, line: logger.log(level, "%s", line))
        self._window_start = -1e300
        self._written = 0
        self._dropped = 0
        self._dropped_level = logging.INFO
        self._held: dict[str, float] = {}  # key -> monotonic end of the learned-budget hold

    # -- events -----------------------------------------------------------------------------

    def cooling(self, key: str, model: str, seconds: float, outcome: str,
                status: int | str | None = None, hint: str = "") -> None:
        """``key`` (for ``model``; "" = the whole key) rests ``seconds``: ``outcome`` is the
        policy's class, ``hint`` the header or body field the time came from."""
        if outcome in DEAD:
            self.dead(key, outcome, status, seconds)
            return
        why = ", ".join(str(x) for x in (status if status is not None else _WORDS.get(outcome, outcome),
                                         hint or "keymux default") if x != "")
        self._line(logging.WARNING,
                   f"keymux: key {key} cools {_secs(seconds)}{_scope(model)} ({why})")

    def dead(self, key: str, outcome: str, status: int | str | None, seconds: float) -> None:
        what = "its key was rejected" if outcome == "auth" else "its account is out of quota"
        st = f"{status}, " if status is not None else ""
        self._line(logging.WARNING,
                   f"keymux: key {key} is dead ({st}{what}); probed again in {_secs(seconds)}")

    def held(self, key: str, what: str, header: str, seconds: float) -> None:
        """A learned budget holds ``key`` back ``seconds``: logged once per hold, not per
        answer that repeats it."""
        now = self.clock.monotonic()
        if self._held.get(key, -1e300) > now:
            return
        self._held[key] = now + seconds
        until = time.strftime("%H:%M:%S", time.gmtime(self.clock.wall() + seconds))
        self._line(logging.WARNING,
                   f"keymux: key {key} held back {_secs(seconds)}: the upstream says no {what} "
                   f"left ({header} = 0), until {until} UTC")

    def probe(self, key: str, scopes: tuple[str, ...]) -> None:
        for model in scopes:
            self._line(NOTICE, f"keymux: key {key}: probe sent{_scope(model)} "
                                     "(one request tries it; the others keep away)")

    def recovered(self, key: str, scopes: tuple[str, ...], how: str = "its probe succeeded") -> None:
        for model in scopes:
            self._line(NOTICE, f"keymux: key {key} recovered{_scope(model)} ({how})")

    def line(self, level: int, line: str) -> None:
        """A state change another module tracks (keypool.budgets), under the same rate limit."""
        self._line(level, line)

    def reset(self, key: str) -> None:
        self._held.pop(key, None)

    # -- rate limit ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the summary of a window that has ended (called periodically)."""
        if self._dropped and self.clock.monotonic() - self._window_start >= self.window_s:
            self._summary()

    def _line(self, level: int, line: str) -> None:
        now = self.clock.monotonic()
        if now - self._window_start >= self.window_s:
            if self._dropped:
                self._summary()
            self._window_start, self._written = now, 0
        if self._written < self.burst:
            self._written += 1
            self.emit(level, line)
        else:
            self._dropped += 1
            self._dropped_level = max(self._dropped_level, level)

    def _summary(self) -> None:
        self.emit(self._dropped_level, f"keymux: … and {self._dropped} more key state changes "
                                       f"in the last {self.window_s:g} s")
        self._dropped, self._dropped_level = 0, logging.INFO


# -- why a key is held back ---------------------------------------------------------------------

def held_back(cool: dict[str, float], reason: dict[str, str], waits: dict[str, float],
              in_flight_full: bool, now: float, extra: list[dict] = ()) -> list[dict]:
    """Every reason a key cannot take a request now, longest first: ``{"reason", "detail",
    "model", "seconds_left"}``. ``reason``: cooldown | learned_budget | rpm | tpm |
    in_flight | budget (``extra``: holds other modules add, e.g. money budgets)."""
    out = []
    for scope, end in cool.items():
        if end > now:
            out.append({"reason": "cooldown", "detail": reason.get(scope, ""), "model": scope,
                        "seconds_left": round(end - now, 3)})
    for name, detail in (("learned_requests", "requests"), ("learned_tokens", "tokens")):
        if waits.get(name, 0.0) > 0:
            out.append({"reason": "learned_budget", "detail": detail, "model": "",
                        "seconds_left": round(waits[name], 3)})
    for name in ("rpm", "tpm"):
        if waits.get(name, 0.0) > 0:
            out.append({"reason": name, "detail": "", "model": "",
                        "seconds_left": round(waits[name], 3)})
    if in_flight_full:
        out.append({"reason": "in_flight", "detail": "", "model": "", "seconds_left": 0.0})
    out.extend(extra)
    out.sort(key=lambda h: -h["seconds_left"])
    return out


def held_back_text(held: list[dict]) -> str:
    """The first reason in words, as keymux.keys and the web UI show it ("" when free)."""
    if not held:
        return ""
    h = held[0]
    if h["reason"] == "cooldown":
        what = _WORDS.get(h["detail"], h["detail"] or "cooldown") + _scope(h["model"])
    elif h["reason"] == "learned_budget":
        what = f"held back: upstream says no {h['detail']} left"
    elif h["reason"] == "in_flight":
        return "held back: max_in_flight reached"
    else:
        what = f"held back: {h['reason']}" + (f" ({h['detail']})" if h["detail"] else "")
    return f"{what}, {_secs(h['seconds_left'])} left"


def key_changes(before: set[str], after: set[str]) -> str:
    """A reload's key changes, for its log line (names only)."""
    added, removed = sorted(after - before), sorted(before - after)
    parts = [f"added {', '.join(added)}"] if added else []
    parts += [f"removed {', '.join(removed)}"] if removed else []
    return f" ({'; '.join(parts)})" if parts else ""
