"""The audit log: who changed what through the UI or its API, and when; its page and export.

Each page that changes something makes ONE call after the change succeeded:
``audit.record(action, target, detail)`` (or a helper below that builds the detail). Who is
the session's label (a hash prefix of its id, as on the Sessions page; ``open`` when the UI
has no credential) and the client address. Never a secret: details hold names and masked
forms, and are scrubbed again against the configured secrets before they are stored.

The change has already happened (keys.yaml is written) when the row is written, so a failed
audit write cannot undo it: it is logged as an error and shown as a banner, now and on the
audit page. Storage: :mod:`webui.auditlog` (``<state_dir>/audit.db``).
"""
from __future__ import annotations

import logging
import math
import re
import time

from flask import Blueprint, current_app, flash, g, render_template, request, session

from keypool.redact import mask, scrub

from . import deps, logexport
from .auditlog import PAGE_SIZE, AuditError, AuditFilter, AuditLog, DB_NAME
from .i18n import t
from .notes import N_
from .requestlog import RANGES, _utc
from .sessions import label_of

logger = logging.getLogger(__name__)
bp = Blueprint("audit", __name__, url_prefix="/audit")
EXTENSION = "keymux_audit"
DEFAULT_RETENTION_DAYS = 14
EXPORT_COLUMNS = ("time", "action", "target", "detail", "session", "address", "id")
_REFERENCE = re.compile(r"^\$\{(\w+)(:-.*)?\}$", re.S)

ACTIONS = {
    "key.added": N_("key added"),
    "key.edited": N_("key edited"),
    "key.renamed": N_("key renamed"),
    "key.enabled": N_("key enabled"),
    "key.disabled": N_("key disabled"),
    "key.deleted": N_("key deleted"),
    "client.added": N_("client added (token issued)"),
    "client.edited": N_("client edited"),
    "client.token_rotated": N_("client token rotated (old one revoked)"),
    "client.deleted": N_("client deleted (token revoked)"),
    "import": N_("keys imported"),
    "export": N_("config exported (secrets as ${VAR})"),
    "export.secrets": N_("config exported with secrets"),
    "cooldown.reset": N_("cooldown reset"),
    "key.tested": N_("key tested (one call to its provider, by the gateway)"),
    "sessions.ended": N_("every session signed out"),
}


def log() -> AuditLog:
    """The audit log of the current state_dir (beside the gateway's keymux.db)."""
    store = deps.store()
    path = store.path.parent / DB_NAME
    logs = current_app.extensions.setdefault(EXTENSION, {})
    if store.fleet:  # state: redis: the fleet's audit stream too (webui/fleet.py)
        from .fleet import FleetAuditLog
        state = deps.snapshot().config.state
        k = f"{path}|{state.url}|{state.prefix}"
        if k not in logs:
            logs[k] = FleetAuditLog(path, store.mirror, state.audit_max)
        return logs[k]
    return logs.setdefault(str(path), AuditLog(path))


def who() -> str:
    sid = session.get("sid")
    if isinstance(sid, str):
        return label_of(sid)
    return "open" if g.get("open_ui") else "-"


def record(action: str, target: str = "", detail: str = "") -> bool:
    """Write one audit row for a change that has been made; False (logged, and a banner
    flashed) if it could not be written."""
    snap = deps.snapshot()
    days = snap.config.logging.retention_days if snap.config else DEFAULT_RETENTION_DAYS
    target, detail = scrub(str(target), snap.secrets), scrub(str(detail), snap.secrets)
    try:
        log().write(action, target, detail, who(), request.remote_addr or "?", days)
    except AuditError as e:
        logger.error("audit log: cannot record %s %s: %s", action, target, e)
        flash(t("The change was made, but the audit log could not record it: %(reason)s",
                reason=str(e)), "error")
        return False
    return True


# -- details: names and masked forms only

def shown_secret(secret: str) -> str:
    """A key or token as the audit log may show it: ``${VAR}`` or its mask."""
    m = _REFERENCE.match(secret.strip())
    return "${" + m[1] + "}" if m else mask(secret)


def key_added(fields: dict, secret: str) -> bool:
    return record("key.added", fields.get("name", ""),
                  f"provider {fields.get('provider', '')}, key {shown_secret(secret)}")


def _plain(value) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "–" if value is None else str(value)


def _changes(before: dict, after: dict) -> list[str]:
    """``field: old → new`` for each non-secret field whose value differs."""
    out = []
    for field in sorted(set(after) - {"name", "key", "token"}):
        old, new = before.get(field), after[field]
        if field == "enabled":
            old = old is not False
        if _plain(old) != _plain(new):
            out.append(f"{field}: {_plain(old)} → {_plain(new)}")
    return out


def changes(before: dict, after: dict) -> str:
    return "; ".join(_changes(before, after)) or "no change"


def key_edited(name: str, before: dict, fields: dict, secret: str) -> bool:
    """A saved key form: renamed (name changed) or edited; the detail lists what changed."""
    new_name = fields.get("name", name)
    found = [f"name: {name} → {new_name}"] if new_name != name else []
    found += _changes(before, fields)
    if secret:
        found.append(f"key replaced: {shown_secret(secret)}")
    return record("key.renamed" if new_name != name else "key.edited", new_name,
                  "; ".join(found) or "no change")


def imported(planned) -> bool:
    names = [c.name or c.provider for c in planned.keys if not c.skip]
    providers = sorted(getattr(planned, "providers", None) or ())
    detail = f"{len(names)} keys: {', '.join(names)}"
    if providers:
        detail += f"; providers added: {', '.join(providers)}"
    return record("import", "", detail)


# -- the page and its export

def read_filter(args, now: float) -> tuple[AuditFilter, dict]:
    shown = {name: (args.get(name) or "").strip()[:200]
             for name in ("action", "range", "from", "to", "q")}
    if shown["action"] not in ACTIONS:
        shown["action"] = ""
    if shown["range"] not in RANGES:
        shown["range"] = "7d"
    since = _utc(shown["from"]) if shown["from"] else None
    until = _utc(shown["to"]) if shown["to"] else None
    if since is None and RANGES[shown["range"]] is not None:
        since = now - RANGES[shown["range"]]
    return AuditFilter(shown["action"], since, until, shown["q"]), shown


def _labelled(row: dict) -> dict:
    note = ACTIONS.get(row["action"])
    return {**row, "label": t(note) if note else row["action"]}


@bp.get("/")
def index():
    f, shown = read_filter(request.args, time.time())
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    audit_log = log()
    rows, total = audit_log.rows(f, page)
    failure = audit_log.last_failure
    return render_template(
        "audit/index.html", rows=[_labelled(r) for r in rows], total=total, page=page,
        pages=max(1, math.ceil(total / PAGE_SIZE)), filters=shown,
        query={k: v for k, v in shown.items() if v},
        actions=[(a, t(n)) for a, n in ACTIONS.items()], ranges=list(RANGES),
        failure=failure, path=str(audit_log.path), fleet=getattr(audit_log, "fleet", False),
        fleet_note=getattr(audit_log, "note", None))


@bp.get("/export.<fmt>")
def export(fmt: str):
    if fmt not in logexport.FORMATS:
        return {"error": f"unknown export format {fmt[:20]!r}: csv or jsonl"}, 404
    f, _ = read_filter(request.args, time.time())
    secrets = deps.snapshot().secrets
    rows = ({**{c: scrub(str(r[c]), secrets) for c in ("target", "detail")},
             "time": logexport.iso(r["ts"]), "action": r["action"], "session": r["session"],
             "address": r["address"], "id": r["id"]} for r in log().export_rows(f))
    return logexport.table_response(fmt, rows, EXPORT_COLUMNS, "keymux-audit")
