"""Clients: the applications allowed to use the gateway, each with its own token.

A token is generated here (``secrets.token_urlsafe``) and shown exactly once, in the
answer to the request that created it; every other page shows its mask.
"""
from __future__ import annotations

import secrets

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for

from keypool.redact import mask

from . import audit, deps, forms
from .forms import FormError
from .i18n import t
from .yamledit import CLIENT_ORDER, is_reference, reference_name

bp = Blueprint("clients", __name__, url_prefix="/clients")
TOKEN_PREFIX = "kmx-"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def client_rows() -> list[dict]:
    snap = deps.snapshot()
    specs = {c.name: c for c in (snap.config.clients or ())} if snap.config else {}
    rows = []
    for item in snap.doc.items("clients") if snap.doc else []:
        name = str(item.get("name", ""))
        raw = item.get("token") if isinstance(item.get("token"), str) else ""
        spec = specs.get(name)
        ref = reference_name(raw) if is_reference(raw) else None
        rows.append({
            "name": name, "reference": ref, "loaded": spec is not None,
            "token": mask(spec.token) if spec else ("" if ref or not raw else mask(raw)),
            "models": [str(m) for m in item.get("models") or []]
            if isinstance(item.get("models"), list) else [],
            "rpm": item.get("rpm") if isinstance(item.get("rpm"), int) else None,
        })
    return rows


def _page(error: str | None = None, status: int = 200, values: dict | None = None):
    snap = deps.snapshot()
    section = snap.doc.has_section("clients") if snap.doc else False
    return render_template("clients/index.html", clients=client_rows(), error=error,
                           has_section=section, values=values or {}), status


@bp.get("/")
def index():
    return _page()


def _limits(form) -> dict:
    return {"models": forms.models(form), "rpm": forms.integer(form, "rpm", t("RPM limit"))}


def _created(name: str, token: str, rotated: bool):
    g.reveal_secrets = True  # this one answer carries the new token, on purpose
    deps.forget_snapshot()
    return render_template("clients/created.html", name=name, token=token, rotated=rotated)


@bp.post("/new")
def new():
    name = forms.text(request.form, "name")
    values = {"name": name, "models": forms.text(request.form, "models"),
              "rpm": forms.text(request.form, "rpm")}
    try:
        if not name:
            raise FormError(t("A name is required."))
        fields = {"name": name, "token": new_token(), **_limits(request.form)}
    except FormError as e:
        return _page(str(e), 400, values)
    fields = {k: v for k, v in fields.items() if v is not None}
    ok, status, error = forms.save(request.form.get("version", ""),
                                   lambda doc: doc.add_item("clients", fields, CLIENT_ORDER),
                                   typed=[fields["token"]])
    if not ok:
        deps.forget_snapshot()
        return _page(error, status, values)
    audit.record("client.added", name, f"token {mask(fields['token'])} issued")
    return _created(name, fields["token"], rotated=False)


@bp.route("/<name>/edit", methods=("GET", "POST"))
def edit(name: str):
    row = next((c for c in client_rows() if c["name"] == name), None)
    if row is None:
        abort(404)
    values = {"models": ", ".join(row["models"]), "rpm": "" if row["rpm"] is None else row["rpm"]}
    error, status = None, 200
    if request.method == "POST":
        values = {"models": forms.text(request.form, "models"), "rpm": forms.text(request.form, "rpm")}
        try:
            fields = _limits(request.form)
        except FormError as e:
            error, status = str(e), 400
        else:
            ok, status, error = forms.save(
                request.form.get("version", ""),
                lambda doc: doc.update_item("clients", name, fields, CLIENT_ORDER))
            if ok:
                audit.record("client.edited", name, audit.changes(row, fields))
                flash(t("Client %(name)s saved.", name=name), "success")
                return redirect(url_for("clients.index"), 303)
    stale = request.form.get("version", "") if status == 409 else None
    return render_template("clients/edit.html", client=row, values=values, error=error,
                           version=stale), status


@bp.post("/<name>/rotate")
def rotate(name: str):
    token = new_token()
    ok, status, error = forms.save(
        request.form.get("version", ""),
        lambda doc: doc.update_item("clients", name, {"token": token}, CLIENT_ORDER),
        typed=[token])
    if not ok:
        deps.forget_snapshot()
        return _page(error, status)
    audit.record("client.token_rotated", name, f"new token {mask(token)}, the old one revoked")
    return _created(name, token, rotated=True)


@bp.post("/<name>/delete")
def delete(name: str):
    ok, status, error = forms.save(request.form.get("version", ""),
                                   lambda doc: doc.remove_item("clients", name))
    if not ok:
        deps.forget_snapshot()
        return _page(error, status)
    audit.record("client.deleted", name, "token revoked")
    flash(t("Client %(name)s removed.", name=name), "success")
    return redirect(url_for("clients.index"), 303)

