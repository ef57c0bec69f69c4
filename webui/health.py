"""A key's health over the last day, from the state store's per-minute attempt counts.

``usage_minute`` holds, per key and minute, the attempts and their outcomes (successes,
rate limited, auth/quota, server errors, client errors). A day is cut into 144 cells of ten
minutes; each cell says whether the key served (``ok``), failed some attempts
(``degraded``), failed every one (``down``) or was not used (``idle``), and why. A client
error (a 4xx that is the request's fault) is not held against the key. The changes between
states are the key's story: when it went down, and when it came back.
"""
from __future__ import annotations

from dataclasses import dataclass

from .store import Store

STEP_MIN = 10
POINTS = 144  # one day
CHANGES_SHOWN = 30
# usage_minute columns -> the cause a failed cell names (the most frequent one wins)
CAUSES = ("rate_limited", "auth_errors", "server_errors")


@dataclass(frozen=True)
class Cell:
    t: float              # Unix time the cell starts
    state: str            # idle | ok | degraded | down
    attempts: int
    failures: int
    cause: str | None     # rate_limited | auth_errors | server_errors, for a failed cell


def minutes(store: Store, names: list[str], start_minute: int) -> list[tuple]:
    """(minute, requests, successes, rate_limited, auth_errors, server_errors) rows of a
    key under any of ``names`` (its own and its former ones: a rename keeps its history)."""
    # Store.query: the store's read-only, fail-soft connection (no table yet -> no rows)
    return store.query(
        "SELECT minute, requests, successes, rate_limited, auth_errors, server_errors"
        f" FROM usage_minute WHERE key IN ({','.join('?' * len(names))}) AND minute >= ?"
        " ORDER BY minute", (*names, start_minute))


def start_minute(now: float, step: int = STEP_MIN, points: int = POINTS) -> int:
    """The first minute of the strip: cells end with the one holding ``now``."""
    end = (int(now // 60) // step + 1) * step
    return end - step * points


def timeline(rows: list[tuple], now: float, step: int = STEP_MIN,
             points: int = POINTS) -> list[Cell]:
    start = start_minute(now, step, points)
    acc = [[0, 0, [0, 0, 0]] for _ in range(points)]  # attempts, failures, by cause
    for minute, requests, _successes, *failed in rows:
        i = (minute - start) // step
        if not 0 <= i < points:
            continue
        fails = [int(f or 0) for f in failed]
        acc[i][0] += int(requests or 0)
        acc[i][1] += sum(fails)
        acc[i][2] = [a + f for a, f in zip(acc[i][2], fails)]
    return [_cell((start + i * step) * 60, *a) for i, a in enumerate(acc)]


def _cell(t: float, attempts: int, failures: int, by_cause: list[int]) -> Cell:
    if not attempts:
        return Cell(t, "idle", 0, 0, None)
    if not failures:
        return Cell(t, "ok", attempts, 0, None)
    cause = CAUSES[max(range(len(CAUSES)), key=lambda i: by_cause[i])]
    return Cell(t, "down" if failures >= attempts else "degraded", attempts, failures, cause)


def changes(cells: list[Cell]) -> list[dict]:
    """State changes between used cells, newest first (an idle stretch changes nothing)."""
    out, last = [], None
    for c in cells:
        if c.state == "idle":
            continue
        if last is not None and c.state != last.state:
            out.append({"t": c.t, "from": last.state, "to": c.state, "cause": c.cause})
        last = c
    return out[::-1][:CHANGES_SHOWN]


def summary(cells: list[Cell]) -> dict:
    attempts = sum(c.attempts for c in cells)
    failures = sum(c.failures for c in cells)
    return {"attempts": attempts, "failures": failures,
            "success_rate": round(100 * (attempts - failures) / attempts, 1) if attempts else None}
