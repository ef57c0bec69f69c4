"""A thread that writes batches, so that no hook ever waits on disk.

A batch that cannot be written (disk full, read-only ``state_dir``, database locked or
corrupt) is not lost in silence: it is kept in a bounded buffer (``Pending``) and retried
with the next flush; ``status()`` tells health and metrics, and the log says once when
writing starts failing and once when it recovers.
"""
from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time

from .base import Batch, Store
from .pending import Pending

logger = logging.getLogger("keymux")
PRUNE_EVERY_S = 3600.0
EXPECTED = (sqlite3.Error, OSError)  # what a disk or a database does; anything else is a bug


class Writer:
    def __init__(self, store: Store, retention_days: int, pending: Pending | None = None):
        self.store = store
        self.retention_s = retention_days * 86400.0
        self.pending = Pending() if pending is None else pending
        self.errors = 0                     # failed writes (and prunes), ever
        self.failing = False                # the last attempt failed
        self._status = self._snapshot(None, None)
        self._queue: queue.SimpleQueue[Batch | threading.Event | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="keymux-store", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        if batch or self.failing:  # nothing new, but something kept to retry
            self._queue.put(batch)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far was tried (shutdown, tests)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def status(self) -> dict:
        """For health and metrics, from any thread: a snapshot the writer replaces whole."""
        return self._status

    def _run(self) -> None:
        next_prune = 0.0
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if isinstance(batch, threading.Event):
                batch.set()
                continue
            if self._write(batch) and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY_S
                self._prune()

    def _write(self, batch: Batch) -> bool:
        todo = self.pending.merged(batch)
        try:
            self.store.write(todo)
        except Exception as e:  # a full disk must not kill the gateway: keep it, say so
            self.pending.keep(todo)
            self._failed(e)
            return False
        kept = len(todo.requests) - len(batch.requests)
        self.pending.clear()
        self._recovered(kept)
        return True

    def _prune(self) -> None:
        try:
            pruned = self.store.prune(time.time() - self.retention_s)
        except Exception as e:
            self._failed(e)
            return
        if pruned:
            logger.info("keymux: pruned %d request-log rows", pruned)

    def _failed(self, e: BaseException) -> None:
        self.errors += 1
        error = f"{type(e).__name__}: {e}"[:300]
        if not self.failing:
            self.failing = True
            logger.error("keymux: the state store cannot write (%s); keeping up to %d "
                         "request-log rows in memory and retrying every flush", error,
                         self.pending.max_rows, exc_info=not isinstance(e, EXPECTED))
        self._status = self._snapshot(error, time.time())

    def _recovered(self, kept: int) -> None:
        if self.failing:
            self.failing = False
            logger.warning("keymux: the state store writes again: %d kept request-log rows "
                           "written, %d dropped while it could not", kept,
                           self.pending.dropped_rows)
        self._status = self._snapshot(self._status.get("last_error"),
                                      self._status.get("last_error_at"))

    def _snapshot(self, error: str | None, at: float | None) -> dict:
        return {"ok": not self.failing, "errors": self.errors, "last_error": error,
                "last_error_at": at, "pending_rows": len(self.pending),
                "dropped_rows": self.pending.dropped_rows,
                "dropped_usage_minutes": self.pending.dropped_minutes}
