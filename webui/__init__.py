"""keymux's sidecar web UI: a Flask app that reads the state store and keys.yaml, writes only
keys.yaml (and its own audit log, ``<state_dir>/audit.db``), and asks the gateway for live stats and one action (reset a key's cooldown).

    create_app(config_path, gateway_url=...) -> Flask app
    python -m webui --config config/keys.yaml        (or: keymux ui)
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from flask import Flask

from .configfile import ConfigFile
from .gateway import GatewayClient
from .pending import PendingImports, TTLCache

DEFAULT_GATEWAY = "http://127.0.0.1:8080"


@dataclass
class Resources:
    """What the blueprints share; reached through :mod:`webui.deps`."""
    config: ConfigFile
    gateway: GatewayClient
    pending: PendingImports
    cache: TTLCache


def create_app(config_path: str | Path, gateway_url: str = DEFAULT_GATEWAY,
               test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        # A fresh key per process: a restart logs everybody out, nothing to keep secret on disk.
        SECRET_KEY=secrets.token_bytes(32),
        SESSION_COOKIE_NAME="keymux_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,
        TRUSTED_HOSTS=None,           # serve.py narrows this to loopback names on a loopback bind
        KEYMUX_ENVIRON=None,          # tests: a dict instead of os.environ
        KEYMUX_ADMIN_TOKEN=None,      # tests: the gateway admin token instead of the environment's
    )
    if test_config:
        app.config.update(test_config)
    environ = app.config["KEYMUX_ENVIRON"]
    app.extensions["keymux"] = Resources(
        config=ConfigFile(config_path, environ=environ),
        gateway=GatewayClient(gateway_url, token=app.config["KEYMUX_ADMIN_TOKEN"] or (
            environ.get("KEYMUX_ADMIN_TOKEN", "") if environ is not None else None)),
        pending=PendingImports(),
        cache=TTLCache(),
    )

    from . import audit, auth, clients, dashboard, i18n, keys, keytools, requestlog, spend, transfer, usage

    i18n.init_app(app)
    spend.init_app(app)  # money filters
    auth.init_app(app)
    for bp in (auth.bp, dashboard.bp, requestlog.bp, keys.bp, clients.bp, transfer.bp, audit.bp):
        app.register_blueprint(bp)
    app.register_blueprint(keytools.bp)  # tools on the keys page (test, bulk, health)
    app.register_blueprint(usage.bp)     # per-client usage
    app.add_url_rule("/", endpoint="index")
    return app
