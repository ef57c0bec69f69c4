"""Tiny accessors for what the blueprints share (the flaskr ``get_db`` pattern)."""
from __future__ import annotations

from pathlib import Path

from flask import current_app, g

from .configfile import ConfigFile, Snapshot
from .gateway import GatewayClient
from .pending import PendingImports, TTLCache
from .store import Store

DB_NAME = "keymux.db"


def config_file() -> ConfigFile:
    return current_app.extensions["keymux"].config


def snapshot() -> Snapshot:
    """The config file as of this request (read once per request)."""
    if "snapshot" not in g:
        g.snapshot = config_file().read()
    return g.snapshot


def forget_snapshot() -> None:
    """After a write (or a refused one): the next snapshot() reads the file again."""
    g.pop("snapshot", None)


def gateway() -> GatewayClient:
    return current_app.extensions["keymux"].gateway


def pending() -> PendingImports:
    return current_app.extensions["keymux"].pending


def cache() -> TTLCache:
    return current_app.extensions["keymux"].cache


def store() -> Store:
    snap = snapshot()
    if snap.config is not None:
        state_dir = Path(snap.config.state_dir)
    else:  # the file does not validate: its default place
        state_dir = config_file().path.absolute().parent / "state"
    state = snap.config.state if snap.config is not None else None
    if state is not None and state.backend == "redis":  # the fleet's log (webui/fleet.py)
        if "fleet_store" not in g:
            from .fleet import FleetStore, mirror_for
            g.fleet_store = FleetStore(state_dir / DB_NAME, mirror_for(current_app, state))
        return g.fleet_store
    return Store(state_dir / DB_NAME)
