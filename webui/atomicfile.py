"""keys.yaml on disk: read with its version, replace atomically unless it changed meanwhile.

The version of a file is the sha256 of its bytes. A page carries the version it was built
from; a save based on an older version is refused (:class:`Conflict`), so a hand edit made
while a form was open is never overwritten.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path


class Conflict(Exception):
    """The file on disk is no longer the version the edit was based on."""


def version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_lock = threading.Lock()


def read(path: Path) -> tuple[str, str]:
    """-> (text, version)."""
    data = Path(path).read_bytes()
    return data.decode("utf-8"), version_of(data)


def write_atomic(path: Path, text: str, expected_version: str) -> str:
    """Replace the file with ``text`` unless it changed since ``expected_version``.

    Temp file in the same directory, fsync, ``os.replace``; the file's mode is kept and a
    symlinked file is written through its link. Returns the new version.
    """
    path = Path(path).resolve()
    data = text.encode("utf-8")
    with _lock:
        if version_of(path.read_bytes()) != expected_version:
            raise Conflict(str(path))
        mode = stat.S_IMODE(path.stat().st_mode)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
    return version_of(data)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a directory; the rename itself is done
    finally:
        os.close(fd)
