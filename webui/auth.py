"""Who may use the UI, and the guards every request passes.

- Login with ``KEYMUX_ADMIN_TOKEN`` (environment) or the password whose werkzeug hash is
  ``admin.password_hash`` in keys.yaml, both compared in constant time. With neither set
  (loopback only, see serve.py) the UI is open and says so on every page.
- A session lives server-side (sessions.py): the cookie carries an id the registry must still
  know, so logout, "sign out everywhere" and the 12 h lifetime end it at once, and a copied
  cookie dies with it. It also remembers a fingerprint of the credentials it logged in with:
  changing the token or the password logs every session out.
- Guesses (login, and the re-authentication that an export with secrets asks for) go through
  one shared limiter (throttle.py), per client address and globally: a refused guess gets 429
  and ``Retry-After`` at once, no thread sleeps. A blank (whitespace) token is never a
  credential, and does not open the UI either.
- Every state-changing request carries the session's CSRF token (form field ``csrf_token``
  or header ``X-CSRF-Token``): missing -> 400, wrong -> 403, before any handler runs.
- Responses: a strict Content-Security-Policy (no inline script, no other origin), no
  caching, and a last scrub of any configured secret (logged: it would be a bug).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import replace
from urllib.parse import urlsplit

from flask import (Blueprint, Flask, Response, abort, current_app, flash, g, jsonify, redirect,
                   render_template, request, session, url_for)
from flask.globals import request_ctx
from werkzeug.security import check_password_hash

from . import audit, deps
from .configfile import Credentials, scrub
from .i18n import LANGUAGES, t
from .notes import N_
from .sessions import SessionRegistry, label_of
from .throttle import LoginLimiter

logger = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
PUBLIC = {"auth.login", "auth.language", "static"}
LIMITER = "keymux_login_limiter"     # app.extensions keys
SESSIONS = "keymux_sessions"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
       " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def credentials() -> Credentials:
    if "credentials" not in g:
        c = deps.config_file().credentials()
        g.blank_token = c.token is not None and not c.token.strip()
        if g.blank_token:  # a typo, not a credential: never accepted, and never an open UI
            c = replace(c, token=None, locked=not c.password_hash)
        g.credentials = c
    return g.credentials


def limiter() -> LoginLimiter:
    return current_app.extensions[LIMITER]


def sessions() -> SessionRegistry:
    return current_app.extensions[SESSIONS]


def _address() -> str:
    return request.remote_addr or "?"


def guess(given: str) -> tuple[int, bool]:
    """Check an admin credential through the shared limiter: (retry_after, ok). A refused
    guess (retry_after > 0) is not checked at all."""
    c = credentials()
    wait = limiter().acquire(_address())
    if wait:
        logger.warning("UI sign-in throttled for %s (retry in %ss)", _address(), wait)
        return wait, False
    ok = bool(given) and not c.locked and check_secret(given, c)
    if ok:
        limiter().succeeded(_address())
    else:
        logger.warning("failed UI sign-in from %s", _address())
    return 0, ok


def throttled_message(wait: int) -> str:
    return t("Too many failed attempts: try again in %(seconds)s s.", seconds=wait)


def reauthenticate() -> tuple[int, str, int] | None:
    """For a request that shows secrets: None if the form's ``secret`` is the admin credential
    (or the UI has none), else why not: (403 or 429, message, seconds to wait)."""
    if not credentials().required:
        return None
    wait, ok = guess(request.form.get("secret", ""))
    if ok:
        return None
    if wait:
        return 429, throttled_message(wait), wait
    return 403, t("Wrong token or password."), 0


def _fingerprint(c: Credentials) -> str:
    material = f"{c.token or ''}\0{c.password_hash or ''}".encode()
    return hmac.new(current_app.secret_key, material, hashlib.sha256).hexdigest()[:32]


def check_secret(given: str, c: Credentials) -> bool:
    """Constant time for the token; werkzeug's own constant-time check for the password."""
    ok = False
    if c.token:
        ok |= hmac.compare_digest(given.encode(), c.token.encode())
    if c.password_hash:
        try:
            ok |= check_password_hash(c.password_hash, given)
        except (ValueError, TypeError):  # a malformed hash in the file: no password login
            logger.warning("admin.password_hash is not a werkzeug password hash")
    return ok


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect."""
    if not target:
        return url_for("index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") \
            or "\\" in target or any(ord(ch) < 33 or ord(ch) == 127 for ch in target):
        return url_for("index")  # browsers drop tabs and newlines: "/\t/evil" is "//evil"
    return target


@bp.route("/login", methods=("GET", "POST"))
def login():
    c = credentials()
    if not c.required:
        return redirect(url_for("index"))
    error, status, wait = None, 200, 0
    if request.method == "POST":
        wait, ok = guess(request.form.get("secret", ""))
        if ok:
            target = safe_next(request.form.get("next"))
            _start_session(c)
            return redirect(target)
        error, status = (throttled_message(wait), 429) if wait else (t("Wrong token or password."), 401)
    response = current_app.make_response((render_template(
        "auth/login.html", error=error, locked=c.locked, broken=c.broken, blank_token=g.blank_token,
        next=safe_next(request.values.get("next"))), status))
    if wait:
        response.headers["Retry-After"] = str(wait)
    return response


def _start_session(c: Credentials) -> None:
    sessions().end(session.get("sid"))
    session.clear()
    session.permanent = True
    session["sid"] = sessions().start(_address())
    session["auth"] = _fingerprint(c)
    session["csrf"] = secrets.token_urlsafe(32)


@bp.post("/logout")
def logout():
    sessions().end(session.get("sid"))
    session.clear()
    flash(t("Signed out."), "info")
    return redirect(url_for("auth.login") if credentials().required else url_for("index"))


@bp.get("/sessions")
def session_list():
    current = label_of(session["sid"]) if isinstance(session.get("sid"), str) else None
    return render_template("auth/sessions.html", sessions=sessions().live(), current=current)


@bp.post("/logout/everywhere")
def logout_everywhere():
    count = sessions().end_all()
    audit.record("sessions.ended", "", f"{count} sessions")
    logger.warning("UI: every session signed out (%d) from %s", count, _address())
    session.clear()
    flash(t("Every session is signed out."), "info")
    return redirect(url_for("auth.login") if credentials().required else url_for("index"))


@bp.post("/language")
def language():
    lang = request.form.get("lang", "")
    response = redirect(safe_next(request.form.get("next")))
    if lang in LANGUAGES:
        response.set_cookie("lang", lang, max_age=365 * 86400, samesite="Strict", httponly=True)
    return response


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def _guard():
    """before_request: CSRF first (nothing may run on a forged request), then login."""
    if request.routing_exception is not None:  # 404, 405, an untrusted Host: no handler runs
        if request_ctx.url_adapter is not None:
            _who()  # the error page shows the nav to a signed-in admin
        return None
    if request.method in UNSAFE:
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            abort(403, t("Cross-origin request refused."))
        given = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token")
        expected = session.get("csrf")
        if not given:
            abort(400, t("Missing CSRF token: reload the page and try again."))
        if not expected:  # a page from a session that is gone (expired, restart): no handler runs
            return _expired()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            abort(403, t("Invalid CSRF token: reload the page and try again."))
    _who()
    if request.endpoint in PUBLIC or g.open_ui or g.signed_in:
        return None
    if "auth" in session:  # signed out elsewhere, expired, or the credential changed
        session.clear()
        if not _wants_json():
            flash(t("Your session has ended: sign in again."), "info")
    if _wants_json():
        return jsonify(error=t("Sign in first.")), 401
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _who() -> None:
    c = credentials()
    g.open_ui = not c.required
    g.signed_in = c.required and hmac.compare_digest(
        str(session.get("auth", "")).encode(), _fingerprint(c).encode()) \
        and sessions().check(session.get("sid"))


def _expired():
    session.clear()
    message = t("Your session has expired: sign in again.")
    if _wants_json():
        return jsonify(error=message), 401
    if request.endpoint == "auth.login":
        return render_template("auth/login.html", error=message, locked=credentials().locked,
                               broken=credentials().broken,
                               blank_token=g.blank_token,
                               next=safe_next(request.form.get("next"))), 400
    flash(message, "info")
    return redirect(url_for("auth.login"), 303)


def _headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    if response.mimetype in ("text/html", "application/json", "text/plain", "application/yaml") \
            and not response.direct_passthrough and not g.get("reveal_secrets"):
        _scrub(response)
    return response


def _scrub(response) -> None:
    """The last line of defence: a secret in a response is a bug, masked and logged."""
    try:
        found = deps.snapshot().secrets
    except OSError:
        return
    body = response.get_data(as_text=True)
    clean = scrub(body, found)
    if clean != body:
        logger.error("a response to %s contained a configured secret; it was masked",
                     request.endpoint)
        response.set_data(clean)


def _error_page(e):
    if request_ctx.url_adapter is None:  # an untrusted Host header: no URLs can be built
        return Response(f"{e.code} {e.name}\n", e.code, mimetype="text/plain")
    message = e.description
    if message == type(e).description:  # werkzeug's own English text: ours, translated
        message = t(OWN_MESSAGES.get(e.code, N_("Something went wrong.")))
    if _wants_json():
        return jsonify(error=message), e.code
    return render_template("error.html", code=e.code, title=t(ERROR_TITLES.get(e.code, N_("Error"))),
                           message=message), e.code


OWN_MESSAGES = {
    400: N_("The request could not be understood."),
    403: N_("This request is not allowed."),
    404: N_("There is no page at this address."),
    405: N_("This page does not accept this kind of request."),
    413: N_("The upload is too large."),
    500: N_("Something went wrong."),
}
ERROR_TITLES = {400: N_("Bad request"), 403: N_("Forbidden"), 404: N_("Page not found"),
                405: N_("Method not allowed"), 409: N_("Conflict"), 413: N_("Too large"),
                500: N_("Server error")}


def init_app(app: Flask) -> None:
    app.extensions[LIMITER] = LoginLimiter()
    app.extensions[SESSIONS] = SessionRegistry(
        app.permanent_session_lifetime.total_seconds())
    app.before_request(_guard)
    app.after_request(_headers)
    for code in (400, 403, 404, 405, 409, 413, 500):
        app.register_error_handler(code, _error_page)
    app.jinja_env.globals["csrf_token"] = csrf_token
