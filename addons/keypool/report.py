"""``keymux report``: spend from the state store's ``spend_day`` table, as a table or JSON.

Reads the database read-only (it never contends with the gateway for its write lock) and
works with the gateway stopped. Periods are whole days as the gateway names them
(``routing.daily_reset`` in ``routing.timezone``): ``--since 7d`` covers every day from
the one that held "now minus 7 days" to today.
"""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

from .periods import Periods
from .spend import DIMS
from .spend_sums import SUM_FIELDS

_SINCE = re.compile(r"(\d{1,5})([dhw])\Z")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
UNIT_S = {"h": 3600, "d": 86400, "w": 7 * 86400}


def since_day(since: str, periods: Periods, now: float) -> str:
    """``7d``, ``24h``, ``2w`` or a date ``2026-11-01`` -> the first day label to include."""
    since = since.strip()
    if _DATE.match(since):
        return since
    m = _SINCE.match(since)
    if not m:
        raise ValueError(f"--since: expected like 7d, 24h, 2w or 2026-11-01, got {since!r}")
    return periods.day_of(now - int(m[1]) * UNIT_S[m[2]])


def read(db_path: Path, first_day: str, by: str) -> list[dict]:
    """Sums per ``by`` (key, client, provider, model) over the days from ``first_day``."""
    if by not in DIMS:
        raise ValueError(f"--by: one of {', '.join(DIMS)}")
    if not db_path.exists():
        return []
    db = sqlite3.connect(f"{db_path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        cols = ", ".join(f"SUM({f})" for f in SUM_FIELDS)
        rows = db.execute(f"SELECT {by}, {cols} FROM spend_day WHERE day >= ? GROUP BY {by}"
                          f" ORDER BY SUM(usd) DESC, {by}", (first_day,)).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):  # a database from before spend was recorded
            return []
        raise
    finally:
        db.close()
    return [_row(name, dict(zip(SUM_FIELDS, sums))) for name, *sums in rows]


def read_fleet(client, prefix: str, first_day: str, last_day: str, by: str) -> list[dict]:
    """``--fleet``: the same sums from every process's rows in Redis (state: redis;
    keypool.store.fleetspend), for the days Redis keeps (KEEP_DAYS)."""
    from .store import fleetspend
    if by not in DIMS:
        raise ValueError(f"--by: one of {', '.join(DIMS)}")
    days = [d for d in fleetspend.days_back(last_day) if d >= first_day]
    pipe = client.pipeline(transaction=False)
    for d in days:
        pipe.hgetall(fleetspend.day_key(prefix, d))
    i = DIMS.index(by)
    sums: dict[str, list] = {}
    for raw in pipe.execute():
        for field, value in raw.items():
            try:
                _, row, v = fleetspend.decode(field, value)
            except (ValueError, TypeError):
                continue
            sums[row[i]] = [a + b for a, b in zip(sums[row[i]], v)] if row[i] in sums else v
    rows = [_row(name, dict(zip(SUM_FIELDS, v))) for name, v in sums.items()]
    rows.sort(key=lambda r: (-(r["usd"] or 0), r["name"]))
    return rows


def _row(name: str, s: dict) -> dict:
    s = {f: s.get(f) or 0 for f in SUM_FIELDS}
    s["usd"] = None if s["requests"] and s["unknown"] == s["requests"] else round(s["usd"], 8)
    return {"name": name, **s}


def total(rows: list[dict]) -> dict:
    t = {f: sum(r[f] or 0 for r in rows) for f in SUM_FIELDS}
    return _row("total", t)


def as_json(rows: list[dict], first_day: str, last_day: str, by: str) -> str:
    return json.dumps({"since": first_day, "until": last_day, "by": by, "rows": rows,
                       "total": total(rows)}, indent=1)


def as_table(rows: list[dict], first_day: str, last_day: str, by: str) -> str:
    head = (by.upper(), "REQUESTS", "UNKNOWN", "TOKENS IN", "TOKENS OUT", "USD")
    body = [(r["name"], str(r["requests"]), str(r["unknown"]), str(r["tokens_in"]),
             str(r["tokens_out"]), _usd(r)) for r in rows + [total(rows)]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [f"spend from {first_day} to {last_day} (days start at the configured daily_reset)",
           line(head)]
    out += [line(b) for b in body[:-1]]
    out += ["-" * len(out[-1]), line(body[-1])]
    if any(r["unknown"] for r in rows):
        out.append("UNKNOWN: requests whose price is not known (no usage, or no price for the"
                   " model: set price: in keys.yaml); USD counts only the priced ones.")
    return "\n".join(out)


def _usd(r: dict) -> str:
    if r["usd"] is None:
        return "unknown"
    return f"{r['usd']:.6f}"
