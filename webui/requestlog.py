"""The request log: newest first, filtered, paginated; each row opens to its attempts."""
from __future__ import annotations

import datetime as dt
import math
import time

from flask import Blueprint, render_template, request

from . import deps, live
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
             for name in ("key", "client", "model", "status", "range", "from", "to")}
    if shown["range"] not in RANGES:
        shown["range"] = "24h"
    since = _utc(shown["from"]) if shown["from"] else None
    until = _utc(shown["to"]) if shown["to"] else None
    if since is None and RANGES[shown["range"]] is not None:
        since = now - RANGES[shown["range"]]
    status = shown["status"] if shown["status"] in STATUS_FILTERS or shown["status"].isdigit() else ""
    return LogFilter(shown["key"], shown["client"], shown["model"], status, since, until), shown


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
    for row in rows:  # bodies and errors are redacted by the gateway; this is belt and braces
        for field in ("request_body", "response_body"):
            if row.get(field):
                row[field] = scrub(row[field], snap.secrets)
        for attempt in row["attempts"]:
            if isinstance(attempt.get("error"), str):
                attempt["error"] = scrub(attempt["error"], snap.secrets)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    keys = [k["name"] for k in live.file_keys(snap)]
    clients = [c.name for c in (snap.config.clients or ())] if snap.config else []
    query = {k: v for k, v in shown.items() if v}
    return render_template("requests/index.html", rows=rows, total=total, page=page, pages=pages,
                           filters=shown, keys=keys, clients=clients, query=query,
                           models=store.models(now - 7 * 86400), statuses=STATUS_FILTERS,
                           ranges=list(RANGES), store_exists=store.path.is_file())
