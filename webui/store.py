"""Read-only views of the gateway's state store (``<state_dir>/keymux.db``, schema.sql).

The UI never writes here. A missing file, or one whose tables are not there yet, reads as
empty: charts are blank, the request log has no rows, nothing raises.
"""
from __future__ import annotations

import json
import math
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

RANGES = {"hour": (60, 1), "day": (1440, 15)}  # name -> (minutes shown, minutes per point)
PAGE_SIZE = 50
STATUS_FILTERS = ("2xx", "4xx", "5xx", "429", "error", "refused")
EXPORT_MAX = 100_000   # rows one export may hold
EXPORT_CHUNK = 1000    # rows read at a time while exporting
LOG_COLUMNS = ("id", "ts", "client", "key", "provider", "model", "status", "attempts",
               "latency_s", "ttfb_s", "tokens_in", "tokens_out", "stream")
ADDED_COLUMNS = ("error_code", "error", "path", "cost_usd",
                 "gateway")  # absent where an older gateway wrote
BODY_COLUMNS = ("request_body", "response_body")
# The attempts of a row, even a row whose JSON is broken (json_each would raise).
_ATTEMPTS = ("json_each(CASE WHEN json_valid(requests.attempts) THEN requests.attempts"
             " ELSE '[]' END)")


@dataclass(frozen=True)
class LogFilter:
    key: str = ""
    client: str = ""
    model: str = ""
    status: str = ""
    since: float | None = None
    until: float | None = None
    q: str = ""        # free text: model, client, key, error code or message (any attempt's too)


class Store:
    fleet = False   # webui.fleet.FleetStore: the fleet's rows, from Redis
    note = None     # why a fleet page shows this host's rows only (Redis away)

    def __init__(self, path: Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.is_file()

    def query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        if not self.path.is_file():
            return []
        uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
        try:
            with closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as db:
                return db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError:  # no such table (yet), locked, not a database at all
            return []

    # -- dashboard

    def history(self, keys: list[str], range_name: str, now: float,
                aliases: dict[str, str] | None = None) -> dict:
        """Per-key series over the last hour or day (the current minute included):
        requests/min, mean latency, tokens. ``aliases`` maps a key's former names to the
        name shown, so a renamed key keeps its history."""
        aliases = {a: n for a, n in (aliases or {}).items() if n in keys}
        shown = list(keys)
        keys = shown + list(aliases)
        span, step = RANGES.get(range_name, RANGES["hour"])
        end = int(now // 60) + 1
        start = end - span
        points = span // step
        where, params = "minute >= ? AND minute < ?", [start, end]
        if keys:
            where += f" AND key IN ({','.join('?' * len(keys))})"
            params += keys
        rows = self.query(
            "SELECT key, (minute - ?) / ?, SUM(requests), SUM(latency_sum),"
            " SUM(tokens_in + tokens_out) FROM usage_minute"
            f" WHERE {where} GROUP BY key, 2", [start, step, *params])
        names = shown or ["*"]
        acc = {n: {"n": [0] * points, "lat": [0.0] * points, "tokens": [0] * points}
               for n in names}
        for key, bucket, requests, latency_sum, tokens in rows:
            a = acc.get(aliases.get(key, key) if keys else "*")
            if a is None or not 0 <= bucket < points:
                continue
            a["n"][bucket] += requests or 0
            a["lat"][bucket] += latency_sum or 0.0
            a["tokens"][bucket] += tokens or 0
        series = {n: {"rpm": [round(c / step, 3) for c in a["n"]],
                      "latency": [round(s / c, 4) if c else None for s, c in zip(a["lat"], a["n"])],
                      "tokens": a["tokens"]} for n, a in acc.items()}
        return {"range": range_name if range_name in RANGES else "hour", "step_s": step * 60,
                "t": [(start + i * step) * 60 for i in range(points)], "series": series}

    def p95_latency(self, since: float) -> dict[str, float]:
        rows = self.query("SELECT key, latency_s FROM requests WHERE ts >= ? AND key IS NOT NULL"
                           " AND latency_s IS NOT NULL ORDER BY ts DESC LIMIT 50000", (since,))
        by_key: dict[str, list[float]] = {}
        for key, latency in rows:
            by_key.setdefault(key, []).append(latency)
        return {k: round(percentile(v, 0.95), 4) for k, v in by_key.items()}

    def usage_since(self, since: float) -> dict[str, dict]:
        rows = self.query("SELECT key, SUM(requests), SUM(tokens_in), SUM(tokens_out)"
                           " FROM usage_minute WHERE minute >= ? GROUP BY key", (int(since // 60),))
        return {k: {"requests": r or 0, "tokens_in": ti or 0, "tokens_out": to or 0}
                for k, r, ti, to in rows}

    def client_outcomes(self, since: float) -> dict:
        """Client requests since ``since`` and how many were answered below 400 (gateway
        refusals count when the gateway logs them: every row is a client request)."""
        rows = self.query("SELECT COUNT(*), SUM(status < 400) FROM requests WHERE ts >= ?",
                           (since,))
        total, ok = rows[0] if rows else (0, 0)
        return {"requests": total or 0, "answered": ok or 0}

    def key_states(self) -> list[dict]:
        """Every key the gateway ever saved state for (deleted and renamed keys too):
        name, secret fingerprint, lifetime counters."""
        out = []
        for name, fp, counters in self.query("SELECT key, fingerprint, counters FROM key_state"):
            try:
                c = json.loads(counters or "{}")
            except ValueError:
                c = {}
            out.append({"name": name, "fingerprint": fp, "counters": c if isinstance(c, dict) else {}})
        return out

    # -- request log

    def requests(self, f: LogFilter, page: int, bodies: bool = False) -> tuple[list[dict], int]:
        have = self._added_columns()
        where, params = _where(f, have)
        total_rows = self.query(f"SELECT COUNT(*) FROM requests{where}", params)
        total = total_rows[0][0] if total_rows else 0
        names, cols = _select(have, bodies, body_chars=4000)
        rows = self.query(f"SELECT {cols} FROM requests{where} ORDER BY ts DESC, id DESC"
                           " LIMIT ? OFFSET ?", [*params, PAGE_SIZE, max(0, page - 1) * PAGE_SIZE])
        return [_item(names, row) for row in rows], total

    def export_rows(self, f: LogFilter, bodies: bool = False, limit: int = EXPORT_MAX):
        """The filtered rows, newest first, read a chunk at a time (keyset, not OFFSET)."""
        have = self._added_columns()
        where, params = _where(f, have)
        names, cols = _select(have, bodies)
        after: tuple | None = None
        left = limit
        while left > 0:
            page_where, page_params = where, list(params)
            if after is not None:
                page_where += (" AND " if where else " WHERE ") + "(ts < ? OR (ts = ? AND id < ?))"
                page_params += [after[0], after[0], after[1]]
            rows = self.query(f"SELECT {cols} FROM requests{page_where} ORDER BY ts DESC,"
                               " id DESC LIMIT ?", [*page_params, min(EXPORT_CHUNK, left)])
            for row in rows:
                yield _item(names, row)
            if len(rows) < min(EXPORT_CHUNK, left):
                return
            left -= len(rows)
            after = (rows[-1][1], rows[-1][0])

    def _added_columns(self) -> frozenset[str]:
        """Which newer columns this database has (an older gateway may not have added them)."""
        rows = self.query("PRAGMA table_info(requests)")
        return frozenset(r[1] for r in rows) & frozenset(ADDED_COLUMNS)

    def models(self, since: float) -> list[str]:
        rows = self.query("SELECT DISTINCT model FROM requests WHERE ts >= ? AND model IS NOT NULL"
                           " ORDER BY model LIMIT 200", (since,))
        return [r[0] for r in rows]


def _select(have: frozenset[str], bodies: bool, body_chars: int | None = None):
    """The names and the SELECT list of a log row; a missing newer column reads as NULL."""
    names = LOG_COLUMNS + ADDED_COLUMNS
    cols = list(LOG_COLUMNS) + [c if c in have else "NULL" for c in ADDED_COLUMNS]
    if bodies:
        names += BODY_COLUMNS
        cols += [f"substr({c}, 1, {body_chars})" if body_chars else c for c in BODY_COLUMNS]
    return names, ", ".join(cols)


def _item(names: tuple, row: tuple) -> dict:
    item = dict(zip(names, row))
    item["attempts"] = _attempts(item["attempts"])
    return item


def like_pattern(text: str) -> str:
    """``text`` as a LIKE ... ESCAPE '\\' pattern that matches it anywhere, literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _where(f: LogFilter, have: frozenset[str] = frozenset()) -> tuple[str, list]:
    clauses, params = [], []
    if f.key:  # any attempt on the key, not only the one that answered
        clauses.append(f"(key = ? OR EXISTS (SELECT 1 FROM {_ATTEMPTS}"
                       " WHERE json_extract(value, '$.key') = ?))")
        params += [f.key, f.key]
    if f.client:
        clauses.append("client = ?")
        params.append(f.client)
    if f.q:
        columns = ["model", "client", "key", "provider"] + [c for c in ("error_code", "error")
                                                           if c in have]
        like = like_pattern(f.q)
        clauses.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in columns)
                       + f" OR EXISTS (SELECT 1 FROM {_ATTEMPTS}"
                       " WHERE json_extract(value, '$.error') LIKE ? ESCAPE '\\'))")
        params += [like] * (len(columns) + 1)
    if f.model:
        clauses.append("model GLOB ?" if "*" in f.model else "model = ?")
        params.append(f.model)
    status = {"2xx": "status BETWEEN 200 AND 299", "4xx": "status BETWEEN 400 AND 499",
              "5xx": "status BETWEEN 500 AND 599", "429": "status = 429",
              "error": "status >= 400",
              # answered by keymux itself: no attempt went upstream
              "refused": "status >= 400 AND attempts IN ('[]', '')"}.get(f.status)
    if status:
        clauses.append(status)
    elif f.status.isdigit():
        clauses.append("status = ?")
        params.append(int(f.status))
    if f.since is not None:
        clauses.append("ts >= ?")
        params.append(f.since)
    if f.until is not None:
        clauses.append("ts < ?")
        params.append(f.until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _attempts(raw: str | None) -> list[dict]:
    try:
        value = json.loads(raw or "[]")
    except ValueError:
        return []
    if not isinstance(value, list):
        return []
    return [{"key": a.get("key"), "status": a.get("status"), "error": a.get("error"),
             "latency_s": a.get("latency_s")} for a in value if isinstance(a, dict)]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p95 of 20 values is the 19th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]
