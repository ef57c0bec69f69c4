"""keys.yaml on disk: read with its version, replace it only while it is still that version.

The version of a file is the sha256 of its bytes. A page carries the version it was built
from; a save based on an older version is refused (:class:`Conflict`), so a hand edit made
while a form was open is never overwritten.

How close the check and the replace are (see docs/ui.md, "How it changes keys.yaml"):

1. Every keymux writer holds :func:`locked` (``flock`` on ``.keys.yaml.lock`` beside the file)
   from the first version check to the end, so keymux writers never race each other.
2. The temp file is written and fsynced *before* the last check, which re-reads the file
   and its inode right before the rename: the window left is two syscalls wide.
3. The rename is ``renameat2(RENAME_EXCHANGE)`` where the platform has it: the file it
   displaced keeps a name (the temp's), so what was replaced is known exactly, not guessed.
   A read lease then waits until no writer still holds that file open (a ``>>`` that
   opened it before the swap), and its bytes are compared with the version checked. If a
   writer got in, the swap is undone and the save is a Conflict: its edit is back in place.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_F_GETLEASE = getattr(fcntl, "F_GETLEASE", 1025)
_WRITER_WAIT_S = 0.2  # a writer that opened the old file before the swap: ">>" takes microseconds


class Conflict(Exception):
    """The file on disk is no longer the version the edit was based on."""


def version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(path: Path) -> tuple[str, str]:
    """-> (text, version)."""
    data = Path(path).read_bytes()
    return data.decode("utf-8"), version_of(data)


def lock_path(path: Path) -> Path:
    """The sidecar every keymux writer locks: ``.keys.yaml.lock`` beside the (real) file."""
    path = Path(path).resolve()
    return path.parent / f".{path.name}.lock"


_thread_lock = threading.Lock()  # cheap for threads of this process; flock is for the others


@contextlib.contextmanager
def locked(path: Path) -> Iterator[Path]:
    """Hold keymux's writer lock on ``path``; yields the resolved path. Not re-entrant."""
    real = Path(path).resolve()
    with _thread_lock:
        fd = os.open(lock_path(real), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield real
        finally:
            os.close(fd)  # releases the flock


def write_atomic(path: Path, text: str, expected_version: str) -> str:
    """Replace the file with ``text`` unless it is no longer ``expected_version``.

    Temp file in the same directory, fsync, swap; the file's mode is kept and a symlinked
    file is written through its link. Returns the new version; raises Conflict, leaving
    the file as the other writer left it.
    """
    data = text.encode("utf-8")
    with locked(path) as real:
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(fd, real, expected_version)
            tmp = _temp(real, data, stat.S_IMODE(os.fstat(fd).st_mode))
            exchanged = False
            try:
                leased = _lease(fd)  # from here on, nobody opens the old file for writing unseen
                try:
                    _check(fd, real, expected_version)  # last look, right before the swap
                    exchanged = _exchange(tmp, real)
                    if not exchanged:
                        os.replace(tmp, real)
                    intact = (not leased or _lease_intact(fd)) and \
                        (not exchanged or os.stat(tmp).st_ino == os.fstat(fd).st_ino)
                    if exchanged and not intact:
                        _undo_swap(real, tmp, data)  # before the blocked writer goes on
                        raise Conflict(str(real))
                finally:
                    if leased:
                        _unlease(fd)
            except BaseException:
                if not exchanged:
                    Path(tmp).unlink(missing_ok=True)
                elif Path(tmp).exists():  # it is the replaced file now: never delete it
                    logger.error("saving %s failed after the swap; the file it replaced is %s",
                                 real, tmp)
                raise
            displaced = _read_fd(fd) if exchanged or leased and intact else _settled_bytes(fd)
        finally:
            os.close(fd)
        if displaced is None or version_of(displaced) != expected_version:
            if exchanged:
                _undo_swap(real, tmp, data)
            else:
                _restore(real, data, displaced)
            raise Conflict(str(real))
        if exchanged:
            Path(tmp).unlink(missing_ok=True)
        _fsync_dir(real.parent)
    return version_of(data)


def _check(fd: int, path: Path, expected_version: str) -> None:
    """The file at ``path`` is still the inode ``fd`` opened, with the expected bytes."""
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same or version_of(_read_fd(fd)) != expected_version:
        raise Conflict(str(path))


def _read_fd(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _temp(path: Path, data: bytes, mode: int) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _renameat2():
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None


_RENAMEAT2 = _renameat2()


def _exchange(a: str | Path, b: str | Path) -> bool:
    """Swap two names atomically; False where the platform or filesystem cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    if err == errno.ENOENT:
        raise Conflict(str(b))  # the file was removed under us
    raise OSError(err, os.strerror(err), str(b))


def _ignore_lease_breaks() -> None:
    """A lease break sends SIGIO, whose default action ends the process: ignore it.

    Leases are only used where this could be done (see :func:`_lease`).
    """
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGIO) == signal.SIG_DFL:
        signal.signal(signal.SIGIO, signal.SIG_IGN)


_ignore_lease_breaks()


def _lease(fd: int) -> bool:
    """Take a read lease on the file: no descriptor is open for writing on it, and an
    ``open`` for writing from now on blocks until the lease is released, which
    :func:`_lease_intact` sees. Waits a little for a writer that has it open (``>>``
    holds it for microseconds); Conflict if one still does. False where leases are not
    available (not the file's owner, NFS, leases disabled, SIGIO not ignored).
    """
    if signal.getsignal(signal.SIGIO) == signal.SIG_DFL:
        return False
    deadline = time.monotonic() + _WRITER_WAIT_S
    while True:
        try:
            fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
            return True
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EBUSY):
                return False
        if time.monotonic() > deadline:
            raise Conflict("keys.yaml is open for writing by another program")
        time.sleep(0.001)


def _lease_intact(fd: int) -> bool:
    """No one has started opening the file for writing since :func:`_lease`."""
    return fcntl.fcntl(fd, _F_GETLEASE) == fcntl.F_RDLCK


def _settled_bytes(fd: int) -> bytes | None:
    """The replaced file's bytes once nobody holds it open for writing (None: someone still does)."""
    try:
        if not _lease(fd):
            return _read_fd(fd)  # no leases here: best effort
    except Conflict:
        return None
    try:
        return _read_fd(fd)
    finally:
        _unlease(fd)


def _unlease(fd: int) -> None:
    with contextlib.suppress(OSError):  # already gone: broken and timed out
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)


def _undo_swap(path: Path, tmp: str, data: bytes) -> None:
    """Swap back: the file another writer changed is in place again, ours goes."""
    if not _exchange(tmp, path):
        raise OSError(errno.EIO, "cannot swap back", str(path))
    if Path(tmp).read_bytes() == data:
        Path(tmp).unlink(missing_ok=True)
    else:  # a writer got into our file too in the microseconds it was in place: keep it
        keep = path.with_name(f"{path.name}.keymux-conflict-{time.time_ns()}")
        os.replace(tmp, keep)
        logger.warning("%s changed twice during a save; the other version is in %s", path, keep)
    _fsync_dir(path.parent)


def _restore(path: Path, data: bytes, displaced: bytes | None) -> None:
    """Without an exchange only the replaced file's bytes are left: write them back."""
    if displaced is None:
        logger.warning("%s was open for writing by another program during a save; "
                       "its last writes may be lost", path)
    elif path.read_bytes() != data:
        logger.warning("%s changed twice during a save; keeping what is there", path)
    else:
        os.replace(_temp(path, displaced, stat.S_IMODE(path.stat().st_mode)), path)
        _fsync_dir(path.parent)


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
