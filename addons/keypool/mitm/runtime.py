"""What outlives one addon instance: the gateway, its store and its writer.

mitmproxy re-executes the ``-s`` script when it changes, creating a new addon, but keeps
imported modules: keeping the runtime here lets key state survive a script reload.
"""
from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from ..config import Config
from ..gateway import Gateway
from ..store import DB_NAME, SQLiteStore, Writer

logger = logging.getLogger("keymux")


@dataclass
class Runtime:
    gateway: Gateway
    store: SQLiteStore
    writer: Writer

    def flush(self) -> None:
        """Hand what the loop collected to the writer thread (no disk I/O here)."""
        gw = self.gateway
        self.writer.submit(gw.recorder.drain(gw.pool.export_state()))


_runtimes: dict[str, Runtime] = {}

# The keymux addon instance that is live now (None between a script's done() and the next
# instance's running(), or for good when a reloaded script fails to load).
active: object | None = None


def runtime_for(path: str, config: Config, admin_token: str | None = None) -> Runtime:
    rt = _runtimes.get(path)
    if rt is None:
        gw = Gateway(config, admin_token=admin_token)
        store = SQLiteStore(config.state_dir / DB_NAME, lazy=True)
        _restore(gw, store)
        writer = Writer(store, config.logging.retention_days)
        gw.store_status = writer.status
        gw.metrics.watch_store(writer.status)
        rt = _runtimes[path] = Runtime(gw, store, writer)
    else:
        rt.gateway.update(config)
        rt.gateway.admin_token = admin_token or None
    return rt


def _restore(gw: Gateway, store: SQLiteStore) -> None:
    """Saved cooldowns and counters; a store that cannot be read yet starts the gateway
    without them (the writer reports the store's state in health and retries)."""
    try:
        saved = store.load_keys()
    except (sqlite3.Error, OSError) as e:
        logger.error("keymux: cannot read the state store %s (%s: %s); starting without "
                     "saved cooldowns and counters", store.path, type(e).__name__, e)
        return
    restored = gw.pool.restore_state(saved)
    if restored:
        logger.info("keymux: restored cooldowns and counters of %d keys from %s",
                    restored, store.path)
