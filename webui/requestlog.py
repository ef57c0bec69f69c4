"""The request log: newest first, filtered, paginated; each row opens to its attempts.
The filtered rows export as CSV or JSONL (``/requests/export.csv``, ``.jsonl``)."""
from __future__ import annotations

import datetime as dt
import math
import time

from flask import Blueprint, render_template, request

from . import deps, live, logexport
from .configfile import scrub
from .store import PAGE_SIZE, STATUS_FILTERS, LogFilter

bp = Blueprint("requests", __name__, url_prefix="/requests")
RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "all": None}


def _utc(value: str) -> float | None:
    """A ``datetime-local`` value, read as UTC."""
    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def read_filter(args, now: float) -> tuple[LogFilter, dict]:
    shown = {name: (args.get(name) or "").strip()[:200]
             for name in ("key", "client", "model", "status", "range", "from", "to", "q")}
    if shown["range"] not in RANGES:
        shown["range"] = "24h"
    since = _utc(shown["from"]) if shown["from"] else None
    until = _utc(shown["to"]) if shown["to"] else None
    if since is None and RANGES[shown["range"]] is not None:
        since = now - RANGES[shown["range"]]
    status = shown["status"] if shown["status"] in STATUS_FILTERS or shown["status"].isdigit() else ""
    return LogFilter(shown["key"], shown["client"], shown["model"], status, since, until,
                     shown["q"]), shown


def clean(row: dict, secrets) -> dict:
    """Bodies and errors are redacted by the gateway; this is belt and braces."""
    for field in ("request_body", "response_body", "error"):
        if row.get(field):
            row[field] = scrub(row[field], secrets)
    for attempt in row["attempts"]:
        if isinstance(attempt.get("error"), str):
            attempt["error"] = scrub(attempt["error"], secrets)
    return row


@bp.get("/")
def index():
    now = time.time()
    f, shown = read_filter(request.args, now)
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    snap = deps.snapshot()
    store = deps.store()
    bodies = bool(snap.config and snap.config.logging.bodies)
    rows, total = store.requests(f, page, bodies=bodies)
    rows = [clean(row, snap.secrets) for row in rows]
    pages = max(1, math.ceil(total / PAGE_SIZE))
    keys = [k["name"] for k in live.file_keys(snap)]
    clients = [c.name for c in (snap.config.clients or ())] if snap.config else []
    query = {k: v for k, v in shown.items() if v}
    return render_template("requests/index.html", rows=rows, total=total, page=page, pages=pages,
                           filters=shown, keys=keys, clients=clients, query=query,
                           models=store.models(now - 7 * 86400), statuses=STATUS_FILTERS,
                           ranges=list(RANGES), store_exists=store.exists(),
                           fleet=store.fleet, fleet_note=store.note,
                           show_gateway=store.fleet or len({r.get("gateway") for r in rows}) > 1)


@bp.get("/export.<fmt>")
def export(fmt: str):
    """The rows the same filters show, as a download (bodies only with logging.bodies)."""
    if fmt not in logexport.FORMATS:
        return {"error": f"unknown export format {fmt[:20]!r}: csv or jsonl"}, 404
    f, _ = read_filter(request.args, time.time())
    snap = deps.snapshot()
    bodies = bool(snap.config and snap.config.logging.bodies)
    rows = (clean(row, snap.secrets) for row in deps.store().export_rows(f, bodies=bodies))
    return logexport.response(fmt, rows, bodies)
