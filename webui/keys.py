"""Keys: add, edit, enable/disable, delete. The secret is write-only.

A key's secret never goes back to the browser: lists show its mask (or the ``${VAR}`` it
references), the edit form leaves the field empty, and an empty field means "unchanged".
"""
from __future__ import annotations

import time

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from keypool.providers import PRESETS

from . import audit, deps, forms, live, spend
from .forms import FormError
from .gateway import GatewayUnavailable
from .i18n import t
from .yamledit import KEY_ORDER, EditError, secret_scalar

bp = Blueprint("keys", __name__, url_prefix="/keys")
BLANK = {"name": "", "provider": "", "enabled": True, "weight": "", "models": "", "rpm": "",
         "tpm": "", "max_in_flight": ""}


def providers() -> list[str]:
    snap = deps.snapshot()
    if snap.config is not None:
        return sorted(snap.config.providers)
    own = snap.doc.mapping("providers") if snap.doc else None
    return sorted(set(PRESETS) | set(own or ()))


@bp.get("/")
def index():
    snap = deps.snapshot()
    return render_template("keys/index.html", keys=live.file_keys(snap), spend=key_spend(snap))


def key_spend(snap) -> dict[str, dict]:
    """Per key: spend today and this month, and its budget hold (the gateway's word; the
    state store's spend when the gateway cannot be reached)."""
    try:
        stats = deps.gateway().stats()
    except GatewayUnavailable:
        stats = None
    view = spend.current(stats, deps.store(), spend.periods_of(snap), time.time())
    rows = {r["name"]: r for r in view["keys"]}
    held = {k.get("name"): spend.key_budget_hold(k.get("held_back") or [])
            for k in (stats or {}).get("keys") or () if isinstance(k, dict)}
    return {name: {"today": rows[name]["today"] if name in rows else spend.entry(name, None),
                   "month": rows[name]["month"] if name in rows else spend.entry(name, None),
                   "budget_hold": held.get(name)} for name in set(rows) | set(held)}


def shown_values(form) -> dict:
    """What the form shows again after a refused save: everything but the secret."""
    shown = {name: forms.text(form, name) for name in BLANK}
    shown["enabled"] = bool(form.get("enabled"))
    return shown


def read_form(form, *, new: bool, existing: dict | None = None) -> tuple[dict, str]:
    """-> (fields to write, the secret typed); FormError for a field that cannot be read."""
    shown = shown_values(form)
    secret = forms.text(form, "key")
    fields = {
        "name": shown["name"], "provider": shown["provider"],
        "weight": forms.number(form, "weight", t("Weight")),
        "models": forms.models(form),
        "rpm": forms.integer(form, "rpm", t("RPM limit")),
        "tpm": forms.integer(form, "tpm", t("TPM limit")),
        "max_in_flight": forms.integer(form, "max_in_flight", t("Max in flight")),
    }
    if not shown["name"]:
        raise FormError(t("A name is required."))
    if secret:
        fields["key"] = secret_scalar(secret)
    elif new:
        raise FormError(t("The key is required: paste it, or write ${VAR} to read it from"
                          " the environment."))
    if not shown["enabled"]:
        fields["enabled"] = False
    elif existing is not None and "enabled" in existing:
        fields["enabled"] = True
    if new:
        fields = {k: v for k, v in fields.items() if v is not None}
    return fields, secret


@bp.route("/new", methods=("GET", "POST"))
def new():
    values, error, status = dict(BLANK), None, 200
    if request.method == "POST":
        values = shown_values(request.form)
        try:
            fields, secret = read_form(request.form, new=True)
            ok, status, error = forms.save(request.form.get("version", ""),
                                           lambda doc: doc.add_item("keys", fields, KEY_ORDER),
                                           typed=[secret])
        except FormError as e:
            status, error = 400, str(e)
        else:
            if ok:
                audit.key_added(fields, secret)
                flash(t("Key %(name)s added.", name=fields["name"]), "success")
                return redirect(url_for("keys.index"))
    return render_template("keys/form.html", values=values, new=True, error=error,
                           version=_stale_version(status),
                           providers=providers()), status


@bp.route("/<name>/edit", methods=("GET", "POST"))
def edit(name: str):
    snap = deps.snapshot()
    if snap.doc is None:
        abort(404)
    try:
        item = snap.doc.find("keys", name)
    except EditError:
        abort(404)
    current = next(k for k in live.file_keys(snap) if k["name"] == name)
    values = {**BLANK, **{k: _show(item.get(k)) for k in BLANK if k in item}}
    values["enabled"] = item.get("enabled", True) is not False
    error, status = None, 200
    if request.method == "POST":
        values = shown_values(request.form)
        try:
            fields, secret = read_form(request.form, new=False, existing=dict(item))
            ok, status, error = forms.save(
                request.form.get("version", ""),
                lambda doc: doc.update_item("keys", name, fields, KEY_ORDER), typed=[secret])
        except FormError as e:
            status, error = 400, str(e)
        else:
            if ok:
                audit.key_edited(name, dict(item), fields, secret)
                flash(t("Key %(name)s saved.", name=fields["name"]), "success")
                return redirect(url_for("keys.index"))
    return render_template("keys/form.html", values=values, new=False, error=error, key=current,
                           version=_stale_version(status),
                           original=name, providers=providers()), status


def _stale_version(status: int) -> str | None:
    """After a conflict the form keeps the version it came with: saving again conflicts again,
    until the page is reloaded and shows what is in the file now."""
    return request.form.get("version", "") if status == 409 else None


def _show(value) -> str | bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


@bp.post("/<name>/toggle")
def toggle(name: str):
    enable = request.form.get("enable") == "1"
    ok, status, error = forms.save(
        request.form.get("version", ""),
        lambda doc: doc.update_item("keys", name, {"enabled": enable}, KEY_ORDER))
    if not ok:
        return _failed(error, status)
    audit.record("key.enabled" if enable else "key.disabled", name)
    flash(t("Key %(name)s enabled.", name=name) if enable
          else t("Key %(name)s disabled.", name=name), "success")
    return redirect(url_for("keys.index"), 303)


@bp.post("/<name>/delete")
def delete(name: str):
    ok, status, error = forms.save(request.form.get("version", ""),
                                   lambda doc: doc.remove_item("keys", name))
    if not ok:
        return _failed(error, status)
    audit.record("key.deleted", name)
    flash(t("Key %(name)s deleted.", name=name), "success")
    return redirect(url_for("keys.index"), 303)


def _failed(error: str | None, status: int):
    deps.forget_snapshot()
    return render_template("keys/index.html", keys=live.file_keys(deps.snapshot()),
                           error=error), status
