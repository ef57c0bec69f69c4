"""Import keys (preview first) and export the config (secrets as ``${VAR}`` by default)."""
from __future__ import annotations

from flask import (Blueprint, Response, abort, flash, g, make_response, redirect, render_template,
                   request, url_for)

from keypool.envfile import parse_dotenv
from keypool.redact import mask

from . import audit, auth, deps, forms, importexport
from .configfile import ConfigError, scrub
from .i18n import t
from .importexport import ImportFormatError
from .yamledit import KEY_ORDER, Document, EditError, is_reference, literal_of, reference_name

bp = Blueprint("transfer", __name__, url_prefix="/transfer")
MAX_IMPORT_CHARS = 512 * 1024


@bp.get("/")
def index():
    return render_template("transfer/index.html", text="", values_text="")


def _import_text() -> str:
    upload = request.files.get("file")
    if upload and upload.filename:
        return upload.read(MAX_IMPORT_CHARS + 1).decode("utf-8-sig", errors="replace")
    return request.form.get("text", "")


def _shown(scalar: str) -> str:
    """A candidate's key as the preview may show it."""
    if is_reference(scalar):
        return reference_name(scalar)
    return mask(literal_of(scalar))


@bp.post("/import")
def preview():
    text = _import_text()
    values_text = request.form.get("values", "")
    snap = deps.snapshot()
    error = None
    if len(text) > MAX_IMPORT_CHARS:
        error = t("The text is too long to import.")
    elif snap.doc is None or snap.config is None:
        error = t("keys.yaml does not validate now; fix it first: %(error)s", error=snap.error)
    if error is None:
        try:
            values = parse_dotenv(values_text) if values_text.strip() else {}
            parsed = importexport.parse(text)
            env = deps.config_file().variables()
            planned = importexport.plan(parsed, snap.doc, snap.config.providers, env, values)
        except ImportFormatError as e:
            error = t("Cannot read this: %(reason)s.", reason=t(e.note))
        except ConfigError as e:
            error = t("Cannot read the values: line %(line)s is not VAR=VALUE.", line=e.line)
    if error:
        # The typed text is not sent back: it may be full of secrets.
        return render_template("transfer/index.html", error=error, text="", values_text=""), 400
    rows = [{"name": c.name or "", "provider": c.provider, "key": _shown(c.key) if c.key else "",
             "origin": t(c.origin) if c.origin else "", "skip": t(c.skip) if c.skip else None} for c in planned.keys]
    importable = [c for c in planned.keys if not c.skip]
    problem = None
    if importable:
        problem = _check(planned)
    ident = deps.pending().put((snap.version, planned)) if importable and not problem else None
    return render_template("transfer/preview.html", rows=rows, notes=[t(n) for n in planned.notes],
                           format=planned.format, providers=sorted(planned.providers),
                           ident=ident, count=len(importable), problem=problem)


def _check(planned) -> str | None:
    """Would the gateway accept the file with these keys? None, or why not (masked)."""
    snap = deps.snapshot()
    doc = Document(snap.text)
    importexport.apply(doc, planned, KEY_ORDER)
    typed = [importexport.resolve(c.key, {}) for c in planned.keys]
    try:
        deps.config_file().validate(doc.dump())
    except ConfigError as e:
        return scrub(str(e), tuple(s for s in typed if s) + snap.secrets)
    return None


@bp.post("/import/confirm")
def confirm():
    item = deps.pending().take(request.form.get("ident", ""))
    if item is None:
        return render_template("transfer/index.html", text="", values_text="",
                               error=t("This preview has expired; import again.")), 400
    version, planned = item
    typed = [importexport.resolve(c.key, {}) for c in planned.keys]
    ok, status, error = forms.save(version, lambda doc: importexport.apply(doc, planned, KEY_ORDER),
                                   typed=typed)
    if not ok:
        return render_template("transfer/index.html", text="", values_text="", error=error), status
    audit.imported(planned)
    count = sum(1 for c in planned.keys if not c.skip)
    flash(t("1 key imported.") if count == 1 else t("%(count)s keys imported.", count=count), "success")
    return redirect(url_for("keys.index"), 303)


def _export() -> tuple[str, list[tuple[str, str]]]:
    snap = deps.snapshot()
    try:
        return importexport.export(snap.text, deps.config_file().variables())
    except (EditError, ConfigError) as e:
        reason = t(e.note) if isinstance(e, EditError) else str(e)
        abort(409, t("keys.yaml cannot be exported now: %(error)s", error=scrub(reason, snap.secrets)))


@bp.get("/export.yaml")
def export_file():
    text, _ = _export()
    download = request.args.get("download") == "1"
    audit.record("export", "", "download" if download else "as text")
    headers = {"Content-Disposition": "attachment; filename=keymux-export.yaml"} if download else {}
    return Response(text, mimetype="text/plain" if not download else "application/yaml",
                    headers=headers)


@bp.get("/export")
def export_page():
    text, pairs = _export()
    audit.record("export", "", "page")
    return render_template("transfer/export.html", yaml_text=text, dotenv=None,
                           placeholders=[var for var, _ in pairs])


@bp.post("/export")
def export_secrets():
    if request.form.get("confirm") != "yes":
        text, pairs = _export()
        return render_template("transfer/export.html", yaml_text=text, dotenv=None,
                               placeholders=[var for var, _ in pairs],
                               error=t("Tick the box to confirm that you want the secrets.")), 400
    refusal = auth.reauthenticate()  # the admin credential again, throttled like a login
    if refusal:
        code, message, wait = refusal
        text, pairs = _export()
        response = make_response(render_template(
            "transfer/export.html", yaml_text=text, dotenv=None,
            placeholders=[var for var, _ in pairs], error=message), code)
        if wait:
            response.headers["Retry-After"] = str(wait)
        return response
    text, pairs = _export()
    auth.logger.warning("UI: secrets exported in plain text from %s", request.remote_addr)
    audit.record("export.secrets", "", f"{len(pairs)} secrets in plain text")
    g.reveal_secrets = True  # asked for, confirmed, and the credential given again
    return render_template("transfer/export.html", yaml_text=text,
                           dotenv=importexport.dotenv_block(pairs),
                           placeholders=[var for var, _ in pairs])
