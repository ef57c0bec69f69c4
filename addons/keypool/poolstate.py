"""The key pool's state as facts: saved across restarts (``export_state``/``restore_state``,
cooldown ends as Unix times) and shown in stats, metrics and the UI (``describe``)."""
from __future__ import annotations

import hashlib

from .keylog import held_back

WHOLE_KEY = ""
DEAD = ("auth", "quota")  # cooled auth_error_s, deliberately beyond max_s


def fingerprint(secret: str) -> str:
    """Tells a key's secret apart from another without revealing it (state of a key whose
    secret changed is not restored)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def export_state(pool) -> list[dict]:
    """What must survive a restart, per key; cooldown ends in Unix time."""
    now, wall = pool.clock.monotonic(), pool.clock.wall()
    out = []
    for k in pool.by_name.values():
        cool = {s: wall + (end - now) for s, end in k.cool.items() if end > now}
        out.append({
            "key": k.name, "fingerprint": fingerprint(k.spec.secret),
            "cooldown_until": cool.pop(WHOLE_KEY, 0.0),
            "cooldown_reason": k.reason.get(WHOLE_KEY, ""),
            "model_cooldowns": cool, "failures_in_row": k.failures_in_row,
            "counters": {"requests": k.requests, "successes": k.successes,
                         "failures": k.failures, "failures_by_class": k.failures_by_class,
                         "tokens_in": k.tokens_in, "tokens_out": k.tokens_out,
                         "latency_sum": k.latency_sum}})
    return out


def restore_state(pool, rows: list[dict]) -> int:
    """Adopt saved state for keys whose secret is unchanged; returns how many."""
    now, wall = pool.clock.monotonic(), pool.clock.wall()
    restored = 0
    for row in rows:
        k = pool.by_name.get(row["key"])
        if k is None or row.get("fingerprint") != fingerprint(k.spec.secret):
            continue
        ends = dict(row.get("model_cooldowns") or {})
        if row.get("cooldown_until"):
            ends[WHOLE_KEY] = row["cooldown_until"]
            k.reason[WHOLE_KEY] = row.get("cooldown_reason") or "server"
        for scope, end in ends.items():
            if end > wall:
                left = end - wall
                if not (scope == WHOLE_KEY and k.reason[WHOLE_KEY] in DEAD):
                    left = min(left, pool.max_cool)  # saved by a gateway without the cap
                k.cool[scope] = now + left
                k.needs_probe.add(scope)
        k.failures_in_row = int(row.get("failures_in_row") or 0)
        c = row.get("counters") or {}
        k.requests, k.successes, k.failures = (int(c.get(f, 0)) for f in
                                               ("requests", "successes", "failures"))
        k.failures_by_class = dict(c.get("failures_by_class") or {})
        k.tokens_in, k.tokens_out = int(c.get("tokens_in", 0)), int(c.get("tokens_out", 0))
        k.latency_sum = float(c.get("latency_sum", 0.0))
        restored += 1
    return restored


def describe(k, now: float, wall: float, hold_checks=()) -> dict:
    """``k``: a keystate.KeyState. ``state`` is over_budget for a key that would serve but for
    its money budget (keypool.budgets)."""
    done = k.successes + k.failures
    whole = max(0.0, k.cool.get(WHOLE_KEY, 0.0) - now)
    limits = k.limits.snapshot(now)
    extra = [h for f in hold_checks for h in f(k, now)]
    state = k.state(now)
    if state == "ok" and any(h["reason"] == "budget" for h in extra):
        state = "over_budget"
    return {
        "name": k.name,
        "provider": k.spec.provider,
        "key": k.masked,
        "enabled": k.spec.enabled,
        "state": state,
        "cooldown_s": round(max([whole] + [e - now for e in k.cool.values()]), 3),
        "cooldown_reason": k.reason.get(WHOLE_KEY, "") if whole else "",
        "cooling_models": {m: round(e - now, 3) for m, e in k.cool.items() if m and e > now},
        "weight": k.spec.weight,
        "in_flight": k.in_flight,
        "max_in_flight": k.spec.max_in_flight,
        "requests": k.requests,
        "successes": k.successes,
        "failures": k.failures,
        "failures_by_class": dict(k.failures_by_class),
        "last_status": k.last_status,
        "avg_latency_s": round(k.latency_sum / done, 4) if done else None,
        "tokens_in": k.tokens_in,
        "tokens_out": k.tokens_out,
        "rpm_used": limits["rpm_used"], "rpm_limit": limits["rpm_limit"],
        "tpm_used": limits["tpm_used"], "tpm_limit": limits["tpm_limit"],
        # what the upstream said is left, and how long limits keep the key from sending
        "learned_requests_left": limits["learned_requests_left"],
        "learned_tokens_left": limits["learned_tokens_left"],
        "limited_s": round(k.limits.wait_for(now, 1), 3),
        "today": k.daily.today(wall),
        # why it cannot take a request now, longest first (keypool.keylog.held_back)
        "held_back": held_back(k.cool, k.reason, k.limits.waits(now),
                               bool(k.spec.max_in_flight and k.in_flight >= k.spec.max_in_flight),
                               now, extra),
    }
