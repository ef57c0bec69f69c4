"""A small dict-based translation layer: English message ids, Chinese translations.

The language comes from the ``lang`` cookie (the switch in the header), else the browser's
Accept-Language, else English. ``t("Key %(name)s saved.", name=...)`` translates, then
formats; a message without a translation falls back to English (tests check there is none).
"""
from __future__ import annotations

import datetime as dt

from markupsafe import Markup
from flask import Flask, g, has_request_context, request

from .messages_zh import ZH
from .notes import Note

LANGUAGES = {"en": "English", "zh": "中文"}
CATALOGS = {"zh": ZH}

# The strings the JavaScript needs, handed over as JSON in every page.
JS_STRINGS = (
    "ok", "cooling", "dead", "disabled", "unknown", "over budget", "Reset cooldown", "Resetting…",
    "Cannot reach the gateway: showing the keys from keys.yaml, live state unknown.",
    "Lost contact with the UI server; retrying.", "Requests per minute", "Latency (s)",
    "Tokens", "No data yet for the selected keys.", "Select keys in the table to chart them.",
    "%(s)s s left", "rate limited", "quota", "auth", "server", "client error",
    "Are you sure?", "Copied", "Copy", "Show attempts", "Hide attempts", "all keys",
    "Dark theme", "Light theme", "updated %(time)s", "The gateway rejected the last reload:",
    "not loaded", "Chart", "Name", "State", "In flight", "RPM / TPM", "rpm", "tpm",
    "Requests", "Success", "Failures", "Latency", "Tokens today",
    "Actions", "No keys in keys.yaml yet.",
    "The gateway cannot write its state store (request log, usage); rows kept in memory:"
    " %(pending)s, dropped: %(dropped)s.",
    "keys.yaml does not validate; the gateway keeps its previous config:",
)
# dashboard
JS_STRINGS += ("cooling for %(model)s", "serving others", "%(n)s cooling for some models",
               "%(n)s from %(k)s deleted keys", "%(n)s client requests, last 24 h",
               "held back: the upstream says none left", "held back: rpm limit",
               "held back: tpm limit", "held back: max in flight", "held back: budget reached")
# dashboard: which worker answered (keymux run --workers N)
JS_STRINGS += ('Live figures from worker %(i)s of %(n)s (pid %(pid)s): each refresh reaches one worker; without shared state (Redis) each keeps its own counters.',)
# dashboard: spend (static/spend.js)
JS_STRINGS += ("Spend", "unknown", "unknown price", "unknown-priced requests: %(n)s",
               "%(n)s min left", "%(n)s h left", "%(n)s d left", "month", "Key", "Client",
               "Today", "This month", "Requests this month", "No spend recorded yet.",
               "no client (open gateway, or no valid token)",
               "day %(day)s, month %(month)s (days start at %(reset)s, %(tz)s)",
               "No spend in the last 30 days.",
               "%(n)s requests of unknown price are not in the chart.", "other")


def lang() -> str:
    if not has_request_context():
        return "en"
    if "lang" not in g:
        chosen = request.cookies.get("lang")
        if chosen not in LANGUAGES:
            chosen = request.accept_languages.best_match(list(LANGUAGES), default="en")
        g.lang = chosen
    return g.lang


def t(message: "str | Note", **values: object) -> str:
    if isinstance(message, Note):
        message, values = message.msgid, {**message.params, **values}
    catalog = CATALOGS.get(lang())
    text = catalog.get(message, message) if catalog else message
    return text % values if values else text


def js_strings() -> dict[str, str]:
    return {m: t(m) for m in JS_STRINGS}


def when(ts: float | None) -> Markup | str:
    """Unix time -> a ``<time>`` in UTC, which app.js shows in the browser's local time
    with the UTC time on hover (one time zone on every page)."""
    if ts is None:
        return ""
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    utc = d.strftime("%Y-%m-%d %H:%M:%S") + " UTC"
    return Markup('<time datetime="{}" title="{}" data-local>{}</time>').format(
        d.strftime("%Y-%m-%dT%H:%M:%SZ"), utc, utc)


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def usd(value: float | None) -> str:
    """A request's cost: "–" when unknown (never "$0"), small amounts with their digits."""
    if value is None:
        return "–"
    return f"${value:.2f}" if value >= 10 else f"${value:.6f}".rstrip("0").rstrip(".") \
        if value else "$0"


def init_app(app: Flask) -> None:
    app.jinja_env.globals.update(_=t, languages=LANGUAGES, js_strings=js_strings)
    app.jinja_env.filters.update(when=when, seconds=seconds, usd=usd)

    @app.context_processor
    def _language():
        return {"lang": lang()}
