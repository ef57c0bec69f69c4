"""Dashboard: every key's live state, totals, charts; polled as JSON every ~2 s."""
from __future__ import annotations

import time

from flask import Blueprint, jsonify, render_template, request

from . import audit, deps, live, spend
from .gateway import GatewayUnavailable
from .i18n import t

bp = Blueprint("dashboard", __name__)
CLIENT_WINDOW_S = 86400  # the client success rate covers the last day of the request log


def dashboard_data() -> dict:
    snap = deps.snapshot()
    gw = deps.gateway()
    stats = health = error = None
    try:
        stats = gw.stats()
        health = gw.health()
    except GatewayUnavailable as e:
        error = t(e.note)
    now = time.time()
    store = deps.store()
    routing = snap.config.routing if snap.config else None
    start = live.day_start(now, routing.daily_reset, routing.timezone) if routing else \
        live.day_start(now, "00:00")
    cache = deps.cache()
    p95 = cache.get(f"p95:{store.path}", lambda: store.p95_latency(now - 3600))
    today = cache.get(f"today:{store.path}:{start}", lambda: store.usage_since(start))
    clients = cache.get(f"clients:{store.path}", lambda: store.client_outcomes(now - CLIENT_WINDOW_S))
    saved = cache.get(f"saved:{store.path}", store.key_states)
    data = live.dashboard(snap, stats, error, health, p95, today, now, clients, saved)
    data["spend"] = spend.current(stats, store, spend.periods_of(snap), now)
    spend.attach(data["keys"], data["spend"])
    return data


@bp.get("/")
def index():
    return render_template("dashboard/index.html", data=dashboard_data())


@bp.get("/api/stats")
def stats():
    return jsonify(dashboard_data())


@bp.get("/api/history")
def history():
    keys = [k for k in request.args.getlist("key") if k][:20]
    range_name = request.args.get("range", "hour")
    store = deps.store()
    current = {f["name"] for f in live.file_keys(deps.snapshot())}
    aliases, _ = live.former_names(deps.snapshot(), store.key_states(), current)
    return jsonify(store.history(keys, range_name, time.time(), aliases))


@bp.get("/api/spend/daily")
def spend_daily():
    """USD per day over the last 30 days, by provider or key (the dashboard's spend chart)."""
    store, now = deps.store(), time.time()
    by = request.args.get("by", "provider")
    per = spend.periods_of(deps.snapshot())
    return jsonify(deps.cache().get(f"spend-daily:{store.path}:{by}:{per.day_of(now)}",
                                    lambda: spend.daily(store, per, now, by)))


@bp.post("/api/keys/<name>/reset")
def reset(name: str):
    try:
        result = deps.gateway().reset(name)
    except GatewayUnavailable as e:
        return jsonify(ok=False, message=t(e.note)), 502
    messages = {
        "reset": t("Cooldown of %(name)s reset.", name=name),
        "unknown_key": t("The gateway does not know a key named %(name)s.", name=name),
        "unsupported": t("This gateway has no reset endpoint yet."),
        "refused": t("The gateway refused the admin token."),
        "error": t("The gateway answered %(status)s.", status=result.status),
    }
    if result.ok:
        audit.record("cooldown.reset", name)
    status = 200 if result.ok else 404 if result.reason == "unknown_key" else 502
    return jsonify(ok=result.ok, message=messages[result.reason]), status
