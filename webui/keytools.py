"""Tools on the keys page: test a key through the gateway, bulk enable/disable/delete, and a
key's health over the last day (``health.py``).

A test is one cheap upstream call that the *gateway* makes (``POST /_keymux/keys/NAME/test``):
the UI never sends a key anywhere, and the key's state changes as for any attempt (a 401
marks it dead, a success revives it). Bulk actions are one edit of keys.yaml through the
one save path (``forms.save``): every named key changes, or none does (a 409 if the file
changed since the page was loaded).
"""
from __future__ import annotations

import time

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from . import audit, deps, forms, health, live
from .configfile import scrub
from .gateway import GatewayUnavailable
from .i18n import t
from .keys import _failed
from .yamledit import KEY_ORDER

bp = Blueprint("keytools", __name__, url_prefix="/keys")
BULK_MAX = 500  # more names than any keys.yaml holds: a form past it is not ours
ACTIONS = ("enable", "disable", "delete")


@bp.post("/<name>/test")
def test(name: str):
    try:
        result = deps.gateway().test_key(name)
    except GatewayUnavailable as e:
        flash(t(e.note), "error")
        return redirect(url_for("keys.index"), 303)
    if result.reason != "tested":
        flash(_refusal(name, result), "error")
    else:
        flash(*_summary(name, result.summary))
        s = result.summary  # the gateway changed the key's state: audited like a reset
        audit.record("key.tested", name, f"{s.get('status') or s.get('error')} · "
                     f"{s.get('outcome')} · state {s.get('state')}")
    return redirect(url_for("keys.index", _anchor=f"key-{name}"), 303)


def _refusal(name: str, result) -> str:
    return {
        "unknown_key": t("The gateway does not know a key named %(name)s.", name=name),
        "unsupported": t("This gateway cannot test keys yet (update keymux)."),
        "refused": t("The gateway refused the admin token."),
    }.get(result.reason) or t("The gateway answered %(status)s.", status=result.status)


def _summary(name: str, s: dict) -> tuple[str, str]:
    """The flash message and its category; the upstream's error is masked by the gateway,
    and again here with every secret the UI knows."""
    ms = s.get("latency_ms")
    if s.get("ok"):
        return t("Key %(name)s works: HTTP %(status)s in %(ms)s ms.", name=name,
                 status=s.get("status"), ms=ms), "success"
    what = f"HTTP {s['status']}" if s.get("status") else (s.get("error") or "?")
    message = t("Key %(name)s failed the test: %(what)s in %(ms)s ms; its state is now"
                " %(state)s.", name=name, what=what, ms=ms, state=t(str(s.get("state"))))
    if s.get("status") and s.get("error"):
        message += " " + scrub(str(s["error"])[:200], deps.snapshot().secrets)
    return message, "error"


@bp.post("/bulk")
def bulk():
    action = request.form.get("action", "")
    names = list(dict.fromkeys(n for n in request.form.getlist("names") if n))[:BULK_MAX]
    if action not in ACTIONS:
        return _failed(t("Choose what to do with the selected keys."), 400)
    if not names:
        return _failed(t("Select at least one key."), 400)

    def edit(doc) -> None:
        for name in names:
            if action == "delete":
                doc.remove_item("keys", name)
            else:
                doc.update_item("keys", name, {"enabled": action == "enable"}, KEY_ORDER)

    ok, status, error = forms.save(request.form.get("version", ""), edit)
    if not ok:
        return _failed(error, status)
    for name in names:  # one row per key, as the one-key buttons write
        audit.record(f"key.{action}d", name, "bulk")
    done = {"enable": t("Enabled %(n)s keys: %(names)s.", n=len(names), names=", ".join(names)),
            "disable": t("Disabled %(n)s keys: %(names)s.", n=len(names), names=", ".join(names)),
            "delete": t("Deleted %(n)s keys: %(names)s.", n=len(names), names=", ".join(names))}
    flash(done[action], "success")
    return redirect(url_for("keys.index"), 303)


@bp.get("/<name>/health")
def key_health(name: str):
    snap, store = deps.snapshot(), deps.store()
    keys = live.file_keys(snap)
    key = next((k for k in keys if k["name"] == name), None)
    if key is None:
        abort(404)
    aliases, _ = live.former_names(snap, store.key_states(), {k["name"] for k in keys})
    names = [name] + [old for old, new in aliases.items() if new == name]
    now = time.time()
    cells = health.timeline(health.minutes(store, names, health.start_minute(now)), now)
    return render_template("keys/health.html", key=key, cells=cells,
                           changes=health.changes(cells), summary=health.summary(cells),
                           step_min=health.STEP_MIN)
