"""Per-client usage: requests, tokens and errors per client over the last day or week.

Read from the state store's request log (one row per client request, refusals included:
a request the gateway refused itself counts as an error of the client it named, or of
"no client" when it named none, e.g. a wrong token). Clients of keys.yaml without traffic
are listed with zeros; names in the log that the file no longer has (a removed client) are
listed too, so totals never drop when a client is removed.
"""
from __future__ import annotations

import time

from flask import Blueprint, render_template, request

from . import deps, spend
from .store import Store

bp = Blueprint("usage", __name__, url_prefix="/usage")
RANGES = {"24h": 86400, "7d": 7 * 86400}  # the request log's own range names


def per_client(store: Store, since: float) -> dict[str | None, dict]:
    fleet = store.per_client(since) if store.fleet else None  # webui/fleet.py's buckets
    if fleet is not None:
        return fleet
    # Store.query: the store's read-only, fail-soft connection (no table yet -> no rows)
    rows = store.query(
        "SELECT client, COUNT(*), SUM(status < 400), SUM(status >= 400 AND status < 500),"
        " SUM(status >= 500), SUM(tokens_in), SUM(tokens_out), AVG(latency_s), MAX(ts)"
        " FROM requests WHERE ts >= ? GROUP BY client", (since,))
    return {client: {"requests": n, "ok": ok or 0, "client_errors": e4 or 0,
                     "server_errors": e5 or 0, "tokens_in": ti or 0, "tokens_out": to or 0,
                     "avg_latency_s": avg, "last_ts": last}
            for client, n, ok, e4, e5, ti, to, avg, last in rows}


def table(configured: list[str], used: dict[str | None, dict]) -> list[dict]:
    """Rows for the page: configured clients in file order, then the log's other names
    (removed clients), then requests without a client; busiest first within each."""
    empty = {"requests": 0, "ok": 0, "client_errors": 0, "server_errors": 0, "tokens_in": 0,
             "tokens_out": 0, "avg_latency_s": None, "last_ts": None}
    rows = [{"name": c, "configured": True, **used.get(c, empty)} for c in configured]
    others = sorted((c for c in used if c is not None and c not in configured),
                    key=lambda c: -used[c]["requests"])
    rows += [{"name": c, "configured": False, **used[c]} for c in others]
    if None in used:
        rows.append({"name": None, "configured": False, **used[None]})
    for r in rows:
        r["errors"] = r["client_errors"] + r["server_errors"]
        r["success_rate"] = round(100 * r["ok"] / r["requests"], 1) if r["requests"] else None
    return rows


@bp.get("/")
def index():
    range_name = request.args.get("range", "24h")
    if range_name not in RANGES:
        range_name = "24h"
    snap = deps.snapshot()
    configured = [c.name for c in (snap.config.clients or ())] if snap.config else []
    store = deps.store()
    rows = table(configured, per_client(store, time.time() - RANGES[range_name]))
    totals = {f: sum(r[f] for r in rows) for f in
              ("requests", "ok", "client_errors", "server_errors", "tokens_in", "tokens_out")}
    return render_template("usage/index.html", rows=rows, totals=totals, range=range_name,
                           ranges=list(RANGES), spend=spend_table(snap, request.args),
                           fleet=store.fleet, fleet_note=store.note)


def spend_table(snap, args) -> dict:
    """Spend per key, client, provider or model today, this month or over 30 days, with its
    tokens (the state store's ``spend_day``; days as the gateway names them)."""
    period = args.get("period", "today")
    period = period if period in spend.TABLE_PERIODS else "today"
    by = args.get("by", "key")
    by = by if by in spend.DIMS else "key"
    first, last = spend.period_days(period, spend.periods_of(snap), time.time())
    rows, total = spend.table(deps.store(), by, first, last)
    return {"period": period, "by": by, "first": first, "last": last, "rows": rows,
            "total": total, "periods": spend.TABLE_PERIODS, "dims": spend.DIMS}
