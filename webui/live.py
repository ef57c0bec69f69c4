"""One row per key for the dashboard: the file's keys joined with the gateway's live stats
and the state store's history. Pure: everything comes in as arguments.
"""
from __future__ import annotations

from typing import Any

from keypool.periods import Periods
from keypool.pool import fingerprint
from keypool.redact import mask

from .configfile import Snapshot
from .yamledit import is_reference, reference_name

OPTIONAL = ("rpm_used", "rpm_limit", "tpm_used", "tpm_limit", "failures_by_class")
FAILURE_CLASSES = ("rate_limited", "quota", "auth", "server", "client_error")


def day_start(now: float, daily_reset: str, timezone: str = "UTC") -> float:
    """The start of the day ``now`` is in: the gateway's own rule (keypool.periods)."""
    return Periods(daily_reset, timezone).day_start(now)


def file_keys(snap: Snapshot) -> list[dict]:
    """The keys as the file names them (disabled and unresolved ones too), secrets masked."""
    specs = {k.name: k for k in snap.config.keys} if snap.config else {}
    out = []
    for item in snap.doc.items("keys") if snap.doc else []:
        name = str(item.get("name", ""))
        raw = item.get("key")
        raw = raw if isinstance(raw, str) else ""
        spec = specs.get(name)
        ref = reference_name(raw) if is_reference(raw) else None
        if spec is not None:
            shown = mask(spec.secret)
        else:
            shown = "" if ref or not raw else mask(raw.replace("$$", "$"))
        # the gateway's reading when the file validates (one meaning: keypool.yamlrules)
        enabled = spec.enabled if spec is not None else item.get("enabled", True) is not False
        out.append({
            "name": name, "provider": str(item.get("provider", "")), "key": shown,
            "reference": ref, "loaded": spec is not None, "enabled": enabled,
            "weight": _number(item.get("weight", 1)), "models": [str(m) for m in item.get("models") or []]
            if isinstance(item.get("models"), list) else [],
            "rpm": _number(item.get("rpm")), "tpm": _number(item.get("tpm")),
            "max_in_flight": _number(item.get("max_in_flight")),
        })
    return out


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def former_names(snap: Snapshot, saved: list[dict], current: set[str]) -> tuple[dict, list]:
    """Split the state store's keys that are no longer named: a former name of a current
    key (same secret fingerprint: a rename, which the gateway carries over) -> that key's
    name; the rest are deleted keys, whose counters still count in the totals."""
    owner: dict[str, str | None] = {}
    for spec in snap.config.keys if snap.config else ():
        fp = fingerprint(spec.secret)
        owner[fp] = None if fp in owner else spec.name  # a shared secret names no one
    aliases, deleted = {}, []
    for row in saved:
        if row["name"] in current:
            continue
        if owner.get(row["fingerprint"]):
            aliases[row["name"]] = owner[row["fingerprint"]]
        else:
            deleted.append(row)
    return aliases, deleted


def _merge(by_name: dict[str, dict], aliases: dict[str, str]) -> dict[str, dict]:
    """Usage of a key's former names added to its own (history kept across a rename)."""
    out = {k: dict(v) for k, v in by_name.items() if k not in aliases}
    for old, new in aliases.items():
        if old in by_name:
            into = out.setdefault(new, {})
            for field, value in by_name[old].items():
                into[field] = (into.get(field) or 0) + (value or 0)
    return out


def dashboard(snap: Snapshot, stats: dict | None, gateway_error: str | None,
              health: dict | None, p95: dict[str, float], today: dict[str, dict],
              now: float, clients: dict | None = None, saved: list[dict] | None = None) -> dict:
    live = {k.get("name"): k for k in (stats or {}).get("keys", []) if isinstance(k, dict)}
    current = {f["name"] for f in file_keys(snap)} | set(live)
    aliases, deleted = former_names(snap, saved or [], current)
    store_today = today
    today = _merge(today, aliases)
    p95 = {**{aliases[k]: v for k, v in p95.items() if k in aliases}, **p95}
    rows = []
    listed = set()
    for f in file_keys(snap):
        listed.add(f["name"])
        rows.append(_row(f, live.get(f["name"]), stats is not None, p95, today))
    for name, k in live.items():  # served, but no longer in the file (reload pending)
        if name not in listed:
            f = {"name": name, "provider": k.get("provider", ""), "key": k.get("key", ""),
                 "reference": None, "loaded": True, "enabled": True, "rpm": None, "tpm": None}
            rows.append(_row(f, k, True, p95, today))
    return {
        "now": now,
        "keys": rows,
        "totals": _totals(rows, deleted, store_today, clients or {}),
        "gateway": {"reachable": stats is not None, "error": gateway_error,
                    "uptime_s": (stats or {}).get("uptime_s"), **_health_view(health),
                    # which worker answered (keymux run --workers N): {pid, index, of}
                    "worker": (stats or {}).get("worker")},
        "config": {"error": snap.error, "warnings": list(snap.warnings)},
    }


def _health_view(health: dict | None) -> dict:
    """The gateway's own word on its reload and store state (``/_keymux/health``), as is:
    the UI shows what health shows, never a judgment of its own."""
    health = health if isinstance(health, dict) else {}
    store = health.get("store") if isinstance(health.get("store"), dict) else None
    return {"status": health.get("status"), "reload_error": health.get("last_reload_error"),
            "store_error": None if not store or store.get("ok") else
            {"error": str(store.get("last_error") or ""),
             "pending_rows": int(store.get("pending_rows") or 0),
             "dropped_rows": int(store.get("dropped_rows") or 0)}}


def _row(f: dict, k: dict | None, reachable: bool, p95: dict, today: dict) -> dict:
    if k is None:
        state = "disabled" if not f["enabled"] else "unknown"
    else:
        state = str(k.get("state", "unknown"))
    k = k or {}
    requests, successes, failures = (int(k.get(x) or 0) for x in ("requests", "successes", "failures"))
    done = successes + failures
    day = k.get("today") if isinstance(k.get("today"), dict) else today.get(f["name"], {})
    by_class = k.get("failures_by_class") if isinstance(k.get("failures_by_class"), dict) else None
    return {
        "name": f["name"], "provider": f["provider"] or k.get("provider", ""),
        "key": k.get("key") or f["key"], "reference": f["reference"], "enabled": f["enabled"],
        "loaded": f["loaded"], "state": state if reachable or state == "disabled" else "unknown",
        "cooldown_s": float(k.get("cooldown_s") or 0.0),
        "cooldown_reason": str(k.get("cooldown_reason") or ""),
        "cooling_models": {str(m): float(v) for m, v in k["cooling_models"].items()
                           if isinstance(v, (int, float))}
        if isinstance(k.get("cooling_models"), dict) else {},
        # why it cannot take a request now (keypool.keylog.held_back), longest first
        "held_back": [{"reason": str(h.get("reason") or ""), "detail": str(h.get("detail") or ""),
                       "model": str(h.get("model") or ""),
                       "seconds_left": float(h.get("seconds_left") or 0.0)}
                      for h in k.get("held_back") or () if isinstance(h, dict)]
        if isinstance(k.get("held_back"), list) else [],
        "in_flight": int(k.get("in_flight") or 0), "requests": requests,
        "successes": successes, "failures": failures,
        "success_rate": round(successes / done, 4) if done else None,
        "failures_by_class": {c: int(by_class.get(c) or 0) for c in FAILURE_CLASSES}
        if by_class is not None else None,
        "avg_latency_s": k.get("avg_latency_s"), "p95_latency_s": p95.get(f["name"]),
        "rpm_used": k.get("rpm_used"), "rpm_limit": k.get("rpm_limit", f["rpm"]),
        "tpm_used": k.get("tpm_used"), "tpm_limit": k.get("tpm_limit", f["tpm"]),
        "today": {"requests": int(day.get("requests") or 0),
                  "tokens_in": int(day.get("tokens_in") or 0),
                  "tokens_out": int(day.get("tokens_out") or 0)},
    }


def _totals(rows: list[dict], deleted: list[dict], today: dict[str, dict],
            clients: dict) -> dict:
    """Key states of the current keys; request counts of every key that ever served
    (deleted ones from the state store); the client-request success rate from the log."""
    states = {s: sum(1 for r in rows if r["state"] == s)
              for s in ("ok", "cooling", "dead", "disabled", "over_budget", "unknown")}
    gone = [d["counters"] for d in deleted]
    gone_today = [today.get(d["name"], {}) for d in deleted]
    successes = sum(r["successes"] for r in rows) + sum(int(c.get("successes") or 0) for c in gone)
    done = successes + sum(r["failures"] for r in rows) + sum(int(c.get("failures") or 0) for c in gone)
    asked, answered = int(clients.get("requests") or 0), int(clients.get("answered") or 0)
    return {
        "keys": len(rows), "states": states,
        # usable keys cooling for some models only (counted in states.ok)
        "partial": sum(1 for r in rows if r["state"] == "ok" and r["cooling_models"]),
        "in_flight": sum(r["in_flight"] for r in rows),
        "requests": sum(r["requests"] for r in rows) + sum(int(c.get("requests") or 0) for c in gone),
        "success_rate": round(successes / done, 4) if done else None,
        "client_requests": asked,
        "client_success_rate": round(answered / asked, 4) if asked else None,
        "deleted_keys": {"keys": len(deleted),
                         "requests": sum(int(c.get("requests") or 0) for c in gone)},
        "tokens_today": sum(r["today"]["tokens_in"] + r["today"]["tokens_out"] for r in rows)
        + sum(int(d.get("tokens_in") or 0) + int(d.get("tokens_out") or 0) for d in gone_today),
        "requests_today": sum(r["today"]["requests"] for r in rows)
        + sum(int(d.get("requests") or 0) for d in gone_today),
    }
