"""Durable state: what the gateway remembers across restarts, and what the UI reads.

    Store (interface)          load_keys / write(batch) / prune / export / import_ / close
     └── SQLiteStore           the embedded default (WAL), ``<state_dir>/keymux.db``
    Recorder                   on the event loop: collects rows and per-minute usage
    Writer                     a thread: writes each batch in one transaction

Hooks only append to the Recorder (no I/O); a task on the loop drains it into the Writer
once a second. A shared backend (Redis, for several gateways) implements ``Store``.
"""
from .base import Batch, Store
from .recorder import Recorder
from .sqlite import SQLiteStore
from .writer import Writer

DB_NAME = "keymux.db"

__all__ = ["Batch", "Store", "Recorder", "SQLiteStore", "Writer", "DB_NAME"]
