"""A thread that writes batches, so that no hook ever waits on disk."""
from __future__ import annotations

import logging
import queue
import threading
import time

from .base import Batch, Store

logger = logging.getLogger("keymux")
PRUNE_EVERY_S = 3600.0


class Writer:
    def __init__(self, store: Store, retention_days: int):
        self.store = store
        self.retention_s = retention_days * 86400.0
        self._queue: queue.SimpleQueue[Batch | threading.Event | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="keymux-store", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        if batch:
            self._queue.put(batch)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far is written (shutdown, tests)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        next_prune = 0.0
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if isinstance(batch, threading.Event):
                batch.set()
                continue
            try:
                self.store.write(batch)
                if time.monotonic() >= next_prune:
                    pruned = self.store.prune(time.time() - self.retention_s)
                    if pruned:
                        logger.info("keymux: pruned %d request-log rows", pruned)
                    next_prune = time.monotonic() + PRUNE_EVERY_S
            except Exception:  # a full disk must not kill the gateway: say so and go on
                logger.exception("keymux: could not write the state store")
