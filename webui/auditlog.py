"""The audit log's storage: ``<state_dir>/audit.db``, one small SQLite table the UI writes.

The gateway's ``keymux.db`` stays the gateway's alone (the UI only reads it): two writer
processes on one database would contend for its lock on the gateway's hot path. So the UI
keeps its own file beside it, in WAL mode, pruned to ``logging.retention_days`` like the
request log. No secret is ever written: callers pass names and masked forms, and every
text is scrubbed again against the configured secrets before it is stored.

A failed write raises :class:`AuditError` (the caller logs it and shows a banner) and is
remembered in :attr:`AuditLog.last_failure` so the audit page can say so too.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .store import like_pattern

DB_NAME = "audit.db"
PAGE_SIZE = 50
EXPORT_MAX = 100_000
PRUNE_EVERY_S = 3600
MAX_TEXT = 300  # characters of a target or a detail
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY,
    ts      REAL NOT NULL,     -- Unix time (UTC)
    action  TEXT NOT NULL,     -- e.g. key.added, export.secrets
    target  TEXT NOT NULL,     -- a key's or client's name, or ''
    detail  TEXT NOT NULL,     -- what changed, masked: never a secret
    session TEXT NOT NULL,     -- the session's label (a hash prefix), or 'open'
    address TEXT NOT NULL      -- the client address the change came from
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
"""
COLUMNS = ("id", "ts", "action", "target", "detail", "session", "address")


class AuditError(Exception):
    """The audit row could not be written; the message is safe to show."""


@dataclass(frozen=True)
class AuditFilter:
    action: str = ""
    since: float | None = None
    until: float | None = None
    q: str = ""       # free text in target or detail


@dataclass(frozen=True)
class Failure:
    ts: float
    reason: str


class AuditLog:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        self.last_failure: Failure | None = None
        self._lock = threading.Lock()
        self._ready = False
        self._pruned_at = float("-inf")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=2.0, isolation_level=None)
        if not self._ready:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            self._ready = True
        return db

    def write(self, action: str, target: str, detail: str, session: str, address: str,
              retention_days: int) -> None:
        now = self.clock()
        row = (now, action, target[:MAX_TEXT], detail[:MAX_TEXT], session, address)
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with closing(self._connect()) as db:
                    db.execute("INSERT INTO audit (ts, action, target, detail, session, address)"
                               " VALUES (?,?,?,?,?,?)", row)
                    if now - self._pruned_at >= PRUNE_EVERY_S:
                        db.execute("DELETE FROM audit WHERE ts < ?",
                                   (now - retention_days * 86400,))
                        self._pruned_at = now
        except (sqlite3.Error, OSError) as e:
            self._ready = False
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            self.last_failure = Failure(now, reason)
            raise AuditError(reason) from e

    # -- reading (a missing or unreadable file reads as empty)

    def _query(self, sql: str, params: list) -> list[tuple]:
        if not self.path.is_file():
            return []
        try:
            with closing(sqlite3.connect(f"file:{self.path.absolute()}?mode=ro", uri=True,
                                         timeout=1.0)) as db:
                return db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError:
            return []

    @staticmethod
    def _where(f: AuditFilter) -> tuple[str, list]:
        clauses, params = ["1"], []
        if f.action:
            clauses.append("action = ?")
            params.append(f.action)
        if f.since is not None:
            clauses.append("ts >= ?")
            params.append(f.since)
        if f.until is not None:
            clauses.append("ts < ?")
            params.append(f.until)
        if f.q:
            like = like_pattern(f.q)
            clauses.append("(target LIKE ? ESCAPE '\\' OR detail LIKE ? ESCAPE '\\'"
                           " OR session LIKE ? ESCAPE '\\' OR address LIKE ? ESCAPE '\\')")
            params += [like] * 4
        return " AND ".join(clauses), params

    def rows(self, f: AuditFilter, page: int = 1) -> tuple[list[dict], int]:
        """-> (one page of rows, newest first; how many match)."""
        where, params = self._where(f)
        total = self._query(f"SELECT COUNT(*) FROM audit WHERE {where}", params)
        found = self._query(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE {where}"
                            " ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?",
                            [*params, PAGE_SIZE, (max(page, 1) - 1) * PAGE_SIZE])
        return [dict(zip(COLUMNS, r)) for r in found], (total[0][0] if total else 0)

    def export_rows(self, f: AuditFilter) -> Iterator[dict]:
        where, params = self._where(f)
        for r in self._query(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE {where}"
                             " ORDER BY ts DESC, id DESC LIMIT ?", [*params, EXPORT_MAX]):
            yield dict(zip(COLUMNS, r))
