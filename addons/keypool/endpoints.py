"""What the gateway answers on its own port: health, stats, metrics and the model list."""
from __future__ import annotations

import datetime as dt
import hmac
from typing import TYPE_CHECKING, Mapping

from prometheus_client import CONTENT_TYPE_LATEST

from . import answers
from .answers import Answer
from .config import ClientSpec
from .globs import is_wildcard

if TYPE_CHECKING:
    from .gateway import Gateway

ADMIN_HEADER = "x-keymux-admin-token"


def reserved(gw: "Gateway", method: str, path: str, headers: Mapping[str, str]) -> Answer | None:
    """Answer a reserved path, or None for a path that goes upstream."""
    if path == "/health":
        return answers.json_answer(200, {"status": "ok"})
    if path == "/metrics":
        return Answer(200, gw.metrics.render(), {"content-type": CONTENT_TYPE_LATEST})
    if path == "/_keymux/health":
        return readiness(gw)
    if path == "/_keymux/stats":
        if not _admin_ok(gw, headers):
            return answers.error(401, "this path needs the admin token (KEYMUX_ADMIN_TOKEN)",
                                 "admin_token_required")
        return answers.json_answer(200, stats(gw))
    if path.startswith("/_keymux/keys/") and path.endswith("/reset"):
        return reset_key(gw, method, path[len("/_keymux/keys/"):-len("/reset")], headers)
    if path.startswith("/_keymux/"):
        return answers.error(404, f"no such keymux path: {path[:100]}", "unknown_path")
    return None


def reset_key(gw: "Gateway", method: str, name: str, headers: Mapping[str, str]) -> Answer:
    """POST /_keymux/keys/NAME/reset: end a key's cooldowns now (the UI's button)."""
    if method != "POST":
        return answers.error(405, "use POST to reset a key's cooldown", "method_not_allowed")
    if not _admin_ok(gw, headers):
        return answers.error(401, "this path needs the admin token (KEYMUX_ADMIN_TOKEN)",
                             "admin_token_required")
    if not gw.pool.reset_cooldown(name):
        return answers.error(404, f"no key named '{name[:64]}'", "key_not_found")
    return answers.json_answer(200, {"key": name, "state": "reset"})


def _admin_ok(gw: "Gateway", headers: Mapping[str, str]) -> bool:
    if not gw.admin_token:
        return True
    given = headers.get(ADMIN_HEADER) or ""
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = given or auth[7:].strip()
    return hmac.compare_digest(given.encode(), gw.admin_token.encode())


def readiness(gw: "Gateway") -> Answer:
    snap = gw.pool.snapshot()
    usable = sum(1 for k in snap if k["state"] == "ok")
    body = {
        "status": "ok" if usable else "unavailable",
        "config": gw.config.source,
        "config_loaded_at": gw.loaded_wall,
        "last_reload_error": gw.reload_error,
        "warnings": list(gw.config.warnings),
        "open_gateway": gw.clients.open,
        "keys": {"total": len(snap), "usable": usable},
        "providers": gw.pool.providers(),  # name -> {"state": "ok"} or its outage
    }
    return answers.json_answer(200 if usable else 503, body)


def stats(gw: "Gateway") -> dict:
    keys = gw.pool.snapshot()
    total = {f: sum(k[f] for k in keys)
             for f in ("requests", "successes", "failures", "in_flight", "tokens_in", "tokens_out")}
    return {"uptime_s": round(gw.clock.wall() - gw.started_wall, 3), "totals": total, "keys": keys,
            "providers": gw.pool.providers()}


def model_ids(gw: "Gateway", client: ClientSpec | None) -> list[tuple[str, str]]:
    """(id, provider) for what the config names: models, globs, or ``provider/*``."""
    enabled = [k for k in gw.config.keys if k.enabled]
    out: dict[str, str] = {}
    for name in dict.fromkeys(k.provider for k in enabled):
        named = list(gw.config.providers[name].models)
        named += [m for k in enabled if k.provider == name for m in k.models]
        for m in named or [f"{name}/*"]:
            out.setdefault(m, name)
    return [(m, p) for m, p in out.items() if gw.clients.allows(client, m)]


def models(gw: "Gateway", path: str, headers: Mapping[str, str],
           client: ClientSpec | None) -> Answer:
    """OpenAI's model list (Anthropic's shape when the client sends anthropic-version)."""
    anthropic = "anthropic-version" in headers
    created = int(gw.started_wall)
    ids = model_ids(gw, client)
    objs = [_model_obj(m, p, created, anthropic) for m, p in ids]
    wanted = path[len("/v1/models/"):] if path.startswith("/v1/models/") else None
    if wanted is not None:
        for obj in objs:
            if obj["id"] == wanted:
                return answers.json_answer(200, obj)
        return answers.error(404, f"model '{wanted[:100]}' is not configured", "model_not_found")
    if anthropic:
        return answers.json_answer(200, {"data": objs, "has_more": False,
                                         "first_id": objs[0]["id"] if objs else None,
                                         "last_id": objs[-1]["id"] if objs else None})
    return answers.json_answer(200, {"object": "list", "data": objs})


def _model_obj(model: str, provider: str, created: int, anthropic: bool) -> dict:
    if anthropic:
        stamp = dt.datetime.fromtimestamp(created, dt.UTC).isoformat().replace("+00:00", "Z")
        return {"type": "model", "id": model, "display_name": model, "created_at": stamp}
    obj = {"id": model, "object": "model", "created": created, "owned_by": provider}
    if is_wildcard(model):
        obj["keymux_pattern"] = True
    return obj
