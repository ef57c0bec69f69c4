"""Keeps Python's cyclic garbage collector from stalling the event loop.

A full (generation 2) collection walks every container object alive: mitmproxy's and
keymux's modules, the config, genai-prices' table. In a running gateway that took 50-60 ms
on this project's VM, every ~5 s under load (each request leaves a few dozen objects that
live long enough to count towards the next full collection): a p99 of +35 ms at c=1 that
plain mitmdump, with a smaller heap, did not have. So once start-up is done keymux collects
once and freezes what is alive (``gc.freeze``): later collections walk only what requests
create. Reference counting still frees frozen objects; only a cycle among them would stay,
which is why a script reload unfreezes and collects first (the old script's module graph is
such a cycle). Measured in docs/benchmarks.md (the GC pause, issue 12).
"""
from __future__ import annotations

import asyncio
import gc
import logging
import threading
from typing import Callable

logger = logging.getLogger("keymux")


def settle() -> None:
    """Collect everything once, then keep what is alive out of every later collection."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def settle_soon(warm: Callable[[], None]) -> threading.Thread:
    """Load what start-up would otherwise load on the first request (``warm``: genai-prices'
    table, ~0.3 s) in a thread, then ``settle`` on the loop: one pause at start instead of
    one every few seconds. A plain daemon thread, not ``asyncio.to_thread``: a gateway
    stopped while it runs leaves no future behind for the closing loop to complain about."""
    loop = asyncio.get_running_loop()

    def run() -> None:
        try:
            warm()
        except Exception as e:  # a missing price table only makes prices unknown, later
            logger.warning("keymux: warming up failed (%s: %s)", type(e).__name__, e)
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop closed meanwhile: the process is stopping
            pass

    thread = threading.Thread(target=run, name="keymux-warm", daemon=True)
    thread.start()
    return thread
