"""Hot reload: a watchdog observer on the config's directory, debounced.

The directory, not the file: editors' atomic renames and Kubernetes ConfigMap symlink
swaps replace the file's inode. watchdog's thread only reads and parses; the result is
handed to the event loop, which swaps the config as one object.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ..config import Config, load_config
from ..config_text import MAX_CONFIG_BYTES
from ..errors import ConfigError

logger = logging.getLogger("keymux")
DEBOUNCE_S = 0.15
POLL_S = 2.0  # a safety net where inotify misses events (network mounts, a watch set late)


# Events of a mere read (inotify reports opens too): digest() itself causes them.
_READS = frozenset({"opened", "closed_no_write"})


class ConfigWatcher(FileSystemEventHandler):
    def __init__(self, path: str | Path, loop: asyncio.AbstractEventLoop,
                 apply: Callable[[Config | None, str | None], None],
                 loaded: bytes | None = None):
        self.path = Path(path).absolute()
        self.loop = loop
        self.apply = apply  # called on the loop with (config, None) or (None, error)
        self._names = {self.path.name, ".env"}
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        # What the running config was read from: a write before the watcher started counts.
        self._digest = loaded if loaded is not None else digest(self.path)
        self._bad: bytes | None = None  # a broken version already reported
        self._observer = Observer()
        self._observer.schedule(self, str(self.path.parent), recursive=False)

    def start(self) -> None:
        self._observer.start()
        self._stopped = threading.Event()
        threading.Thread(target=self._poll, name="keymux-config-poll", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            if self._timer:
                self._timer.cancel()
        # No join: this runs on the event loop (done hook), and watchdog's threads are
        # daemons that can take seconds to notice.
        self._observer.stop()

    def _poll(self) -> None:
        self._kick()  # a write that landed while the watch was being set up
        while not self._stopped.wait(POLL_S):
            self._kick()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _READS:  # our own digest() opening the file: no change, and
            return                       # a kick would read it again, for ever (a timer a turn)
        names = {os.path.basename(p) for p in (event.src_path, getattr(event, "dest_path", ""))
                 if p}
        # The file, its .env, or a ConfigMap's ..data swap; not logs or our state store.
        if names & self._names or any(n.startswith("..") for n in names):
            self._kick()

    def _kick(self) -> None:
        with self._lock:  # a burst of events (truncate, write, rename) reloads once
            if self._timer is None or not self._timer.is_alive():
                self._timer = threading.Timer(DEBOUNCE_S, self._reload)
                self._timer.daemon = True
                self._timer.start()

    def _reload(self) -> None:
        now = digest(self.path)
        if now == self._bad or (now == self._digest and self._bad is None):
            return  # an unrelated file in the directory changed, or nothing new
        # Also when the serving content is back after a reported error (a typo undone, a
        # deleted file put back): reading it again clears the error, as any good reload does.
        try:
            config, error = load_config(self.path), None
        except ConfigError as e:
            config, error = None, str(e)
        except OSError as e:
            config, error = None, f"{self.path}: cannot read: {e.strerror}"
        if config is not None:
            self._digest, self._bad = now, None
        else:
            self._bad = now
        self.loop.call_soon_threadsafe(self.apply, config, error)


def digest(path: str | Path) -> bytes:
    """What the config depends on: the file and the .env beside it."""
    h = hashlib.sha256()
    path = Path(path)
    for p in (path, path.with_name(".env")):
        try:  # a huge file is refused by its size: hashing its head (and size) is enough
            with p.open("rb") as f:
                h.update(str(os.fstat(f.fileno()).st_size).encode() + b"\0")
                h.update(f.read(MAX_CONFIG_BYTES + 1))
        except OSError:
            h.update(b"\0missing")
    return h.digest()
