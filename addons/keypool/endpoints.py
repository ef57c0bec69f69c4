"""What the gateway answers on its own port: health, stats, metrics and the model list."""
from __future__ import annotations

import datetime as dt
import os
import hmac
from typing import TYPE_CHECKING, Mapping

from prometheus_client import CONTENT_TYPE_LATEST

from . import answers, exposure, keytest, modellist
from .answers import Answer
from .config import ClientSpec

if TYPE_CHECKING:
    from .gateway import Gateway

ADMIN_HEADER = "x-keymux-admin-token"


def reserved(gw: "Gateway", method: str, path: str,
             headers: Mapping[str, str]) -> Answer | keytest.KeyTest | None:
    """Answer a reserved path, or None for a path that goes upstream (a key test: a
    ``KeyTest`` ticket, which the glue sends itself)."""
    if path == "/health":
        return answers.json_answer(200, {"status": "ok"})
    if path == "/metrics":
        return _surface(gw, gw.config.server.metrics, path, headers) or Answer(
            200, gw.metrics.render(), {"content-type": CONTENT_TYPE_LATEST})
    if path == "/_keymux/health":
        return _surface(gw, gw.config.server.health, path, headers) or readiness(gw)
    if path == "/_keymux/stats":
        return admin_refusal(gw, headers, write=False) or answers.json_answer(200, stats(gw))
    if path.startswith("/_keymux/keys/") and path.endswith("/reset"):
        return reset_key(gw, method, path[len("/_keymux/keys/"):-len("/reset")], headers)
    if path.startswith("/_keymux/keys/") and path.endswith("/test"):
        return keytest.admit(gw, method, path[len("/_keymux/keys/"):-len("/test")], headers)
    if path.startswith("/_keymux/"):
        return answers.error(404, f"no such keymux path: {path[:100]}", "unknown_path")
    return None


def reset_key(gw: "Gateway", method: str, name: str, headers: Mapping[str, str]) -> Answer:
    """POST /_keymux/keys/NAME/reset: end a key's cooldowns now (the UI's button)."""
    if method != "POST":
        return answers.error(405, "use POST to reset a key's cooldown", "method_not_allowed")
    refused = admin_refusal(gw, headers, write=True)
    if refused is not None:
        return refused
    if not gw.pool.reset_cooldown(name):
        return answers.error(404, f"no key named '{name[:64]}'", "key_not_found")
    return answers.json_answer(200, {"key": name, "state": "reset"})


def _surface(gw: "Gateway", mode: str, path: str, headers: Mapping[str, str]) -> Answer | None:
    """server.metrics / server.health: open, admin (the admin token), or off."""
    if mode == "open":
        return None
    if mode == "off":
        return answers.error(404, f"{path} is turned off in keys.yaml (server:)", "unknown_path")
    return admin_refusal(gw, headers, write=True)


HOW_TO_SET = ("no admin token is set: start the gateway with KEYMUX_ADMIN_TOKEN=<a long random"
              " string> in its environment and send it as the x-keymux-admin-token header")


def admin_refusal(gw: "Gateway", headers: Mapping[str, str], write: bool) -> Answer | None:
    """None when this caller may use the admin surface.

    Reading stats is open only on a loopback gateway without clients: and without an admin
    token; a change (reset) always needs a token. The sidecar token is the one ``keymux
    run`` generates for its own web UI."""
    given = _presented(headers)
    rules = exposure.of(gw)
    if given and any(hmac.compare_digest(given.encode(), t.encode())
                     for t in (gw.admin_token, rules.binds.sidecar_token) if t):
        return None
    if not gw.admin_token:
        if not write and not rules.admin_closed:
            return None
        return answers.error(403, HOW_TO_SET, "admin_token_not_set")
    return answers.error(401, "this path needs the admin token (KEYMUX_ADMIN_TOKEN)",
                         "admin_token_required")


def _presented(headers: Mapping[str, str]) -> str:
    given = headers.get(ADMIN_HEADER) or ""
    auth = headers.get("authorization") or ""
    if not given and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    return given


def readiness(gw: "Gateway") -> Answer:
    snap = gw.pool.snapshot()
    usable = sum(1 for k in snap if k["state"] == "ok")
    store = gw.store_status() if gw.store_status else None
    # degraded: it serves, but something it should do fails (the store cannot write)
    shared = gw.pool.shared.status()  # None: nothing shared (the default)
    status = "unavailable" if not usable else "degraded" if (
        (store and not store["ok"]) or (shared and not shared["ok"])) else "ok"
    body = {
        "status": status,
        "config": gw.config.source,
        "config_loaded_at": gw.loaded_wall,
        "last_reload_error": gw.reload_error,
        "warnings": list(gw.config.warnings),
        "open_gateway": gw.clients.open,
        "keys": {"total": len(snap), "usable": usable},
        "providers": gw.pool.providers(),  # name -> {"state": "ok"} or its outage
    }
    if store is not None:
        body["store"] = store
    if shared is not None:  # several processes share the pool (keypool.shared_redis)
        body["shared_state"] = shared
    if gw.fleet_log is not None:  # the request log mirrored to Redis (store/fleetlog.py)
        body["fleet_log"] = gw.fleet_log.status()
        if not body["fleet_log"]["ok"] and status == "ok":
            body["status"] = "degraded"
    lists = modellist.of(gw).health(gw.config)
    if lists:  # a warning only: the gateway serves whatever the lists say
        body["model_lists"] = lists
    return answers.json_answer(200 if usable else 503, body)


def stats(gw: "Gateway") -> dict:
    keys = gw.pool.snapshot()
    total = {f: sum(k[f] for k in keys)
             for f in ("requests", "successes", "failures", "in_flight", "tokens_in", "tokens_out")}
    wall = gw.clock.wall()
    spend = gw.ledger.snapshot(wall)
    today, month = spend["today"]["by_key"], spend["this_month"]["by_key"]
    for k in keys:
        k["spend_today_usd"] = today[k["name"]]["usd"] if k["name"] in today else 0.0
        k["spend_month_usd"] = month[k["name"]]["usd"] if k["name"] in month else 0.0
        k["budget"] = gw.budgets.view("key", k["name"], wall)  # None: no budget
    budgets = {"clients": {n: gw.budgets.view("client", n, wall) for n in sorted(gw.budgets.clients)},
               "keys": {n: gw.budgets.view("key", n, wall) for n in sorted(gw.budgets.keys)}}
    return {"uptime_s": round(wall - gw.started_wall, 3), "totals": total, "keys": keys,
            "providers": gw.pool.providers(), "spend": spend, "budgets": budgets,
            "worker": worker(), **fleet(gw)}


def fleet(gw: "Gateway") -> dict:
    """state: redis: today's (UTC) per-key counters of every process, read back from Redis
    every 2 s (``keys`` above are this process's own, lifetime)."""
    if gw.fleet_log is None:
        return {}
    return {"fleet": gw.fleet_log.fleet or {"day": None, "as_of": None, "keys": {}}}


def worker() -> dict:
    """Which process answered: behind `keymux run --workers N` (docs/scaling.md) one port
    reaches one worker per connection, and each worker's counters are its own."""
    return {"pid": os.getpid(), "index": int(os.environ.get("KEYMUX_WORKER", "1")),
            "of": int(os.environ.get("KEYMUX_WORKERS", "1"))}


def model_ids(gw: "Gateway", client: ClientSpec | None,
              anthropic: bool = False) -> list[tuple[str, str]]:
    """(id, provider) of every model this client may send (see keypool/modellist.py)."""
    shown = modellist.of(gw).listing(gw.config, gw.router, anthropic)
    if client is not None and client.models:
        shown = modellist.visible(shown, lambda m: gw.clients.allows(client, m))
    return [(s.id, s.provider) for s in shown]


def models(gw: "Gateway", path: str, headers: Mapping[str, str],
           client: ClientSpec | None) -> Answer:
    """OpenAI's model list (Anthropic's shape, and only the providers an Anthropic client
    reaches, when the client sends anthropic-version); ``/v1/models/{id}``: one of them."""
    anthropic = "anthropic-version" in headers
    created = int(gw.started_wall)
    ids = model_ids(gw, client, anthropic)
    wanted = path[len("/v1/models/"):] if path.startswith("/v1/models/") else None
    if wanted is not None:
        for m, p in ids:
            if m == wanted:
                return answers.json_answer(200, _model_obj(m, p, created, anthropic))
        return answers.error(404, f"model '{wanted[:100]}' is not served here", "model_not_found",
                             anthropic=anthropic)
    objs = [_model_obj(m, p, created, anthropic) for m, p in ids]
    if anthropic:
        return answers.json_answer(200, {"data": objs, "has_more": False,
                                         "first_id": objs[0]["id"] if objs else None,
                                         "last_id": objs[-1]["id"] if objs else None})
    return answers.json_answer(200, {"object": "list", "data": objs})


def _model_obj(model: str, provider: str, created: int, anthropic: bool) -> dict:
    if anthropic:
        stamp = dt.datetime.fromtimestamp(created, dt.UTC).isoformat().replace("+00:00", "Z")
        return {"type": "model", "id": model, "display_name": model, "created_at": stamp}
    return {"id": model, "object": "model", "created": created, "owned_by": provider}
