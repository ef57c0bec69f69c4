"""The embedded default store: SQLite in WAL mode, one file under ``state_dir``."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from .base import Batch

SCHEMA = (Path(__file__).with_name("schema.sql")).read_text()
USAGE_FIELDS = ("requests", "successes", "rate_limited", "auth_errors", "server_errors",
                "client_errors", "tokens_in", "tokens_out", "latency_sum")
REQUEST_FIELDS = ("ts", "client", "key", "provider", "model", "status", "attempts",
                  "latency_s", "ttfb_s", "tokens_in", "tokens_out", "stream",
                  "request_body", "response_body", "error_code", "error", "path", "cost_usd",
                  "gateway")
# Columns added after the first release: (name, type) added to an older database at open.
ADDED_COLUMNS = (("error_code", "TEXT"), ("error", "TEXT"), ("path", "TEXT"),
                 ("cost_usd", "REAL"), ("gateway", "TEXT"))
SPEND_KEY = ("day", "key", "client", "provider", "model")
SPEND_FIELDS = ("usd", "requests", "unknown", "tokens_in", "tokens_out", "cache_read",
                "cache_write")
SPEND_KEEP_DAYS = 400  # spend outlives the request log: monthly reports a year back
TABLES = ("key_state", "usage_minute", "requests", "spend_day")
REQUEST_DEFAULTS = {"tokens_in": 0, "tokens_out": 0, "stream": 0, "attempts": []}
KEY_FIELDS = ("key", "fingerprint", "cooldown_until", "cooldown_reason", "model_cooldowns",
              "failures_in_row", "counters", "updated")


class SQLiteStore:
    def __init__(self, path: str | Path, *, lazy: bool = False):
        self.path = Path(path)
        # One connection, used by the writer thread and (before serving) the loader. Opened
        # on first use when ``lazy``: a state_dir that cannot be written yet must not stop
        # the gateway (the writer reports it and retries).
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        if not lazy:
            with self._lock:
                self._conn()

    def _conn(self) -> sqlite3.Connection:
        """The connection, opened (schema and all) if it is not yet; call with the lock held."""
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.executescript(SCHEMA)
                migrate(db)
                db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def load_keys(self) -> list[dict]:
        with self._lock:
            rows = self._conn().execute(
                f"SELECT {', '.join(KEY_FIELDS)} FROM key_state").fetchall()
        out = []
        for row in rows:
            d = dict(zip(KEY_FIELDS, row))
            d["model_cooldowns"] = json.loads(d["model_cooldowns"] or "{}")
            d["counters"] = json.loads(d["counters"] or "{}")
            out.append(d)
        return out

    def load_spend(self, since_day: str) -> list[dict]:
        with self._lock:
            rows = self._conn().execute(
                f"SELECT {', '.join(SPEND_KEY + SPEND_FIELDS)} FROM spend_day WHERE day >= ?",
                (since_day,)).fetchall()
        return [dict(zip(SPEND_KEY + SPEND_FIELDS, row)) for row in rows]

    def write(self, batch: Batch) -> None:
        now = time.time()
        with self._lock, self._transaction():
            db = self._db
            db.executemany(
                f"INSERT INTO requests ({', '.join(REQUEST_FIELDS)}) VALUES "
                f"({', '.join('?' * len(REQUEST_FIELDS))})",
                [tuple(_column(r.get(f, REQUEST_DEFAULTS.get(f))) for f in REQUEST_FIELDS)
                 for r in batch.requests])
            db.executemany(_USAGE_UPSERT, [
                (key, minute, sums["provider"], *(sums.get(f, 0) for f in USAGE_FIELDS))
                for (key, minute), sums in batch.usage.items()])
            db.executemany(
                f"INSERT OR REPLACE INTO key_state ({', '.join(KEY_FIELDS)}) VALUES "
                f"({', '.join('?' * len(KEY_FIELDS))})",
                [tuple(_column(s.get(f, now)) for f in KEY_FIELDS) for s in batch.key_states])
            db.executemany(_SPEND_UPSERT, [(*row, *(sums.get(f, 0) for f in SPEND_FIELDS))
                                           for row, sums in batch.spend.items()])

    def prune(self, before: float) -> int:
        with self._lock, self._transaction():
            n = self._db.execute("DELETE FROM requests WHERE ts < ?", (before,)).rowcount
            self._db.execute("DELETE FROM usage_minute WHERE minute < ?", (int(before // 60),))
            oldest = time.gmtime(min(before, time.time() - SPEND_KEEP_DAYS * 86400.0))
            self._db.execute("DELETE FROM spend_day WHERE day < ?",
                             (time.strftime("%Y-%m-%d", oldest),))
        return n

    def export(self) -> dict:
        with self._lock:
            db = self._conn()
            return {table: [dict(zip([c[0] for c in cur.description], row)) for row in cur]
                    for table in TABLES
                    for cur in [db.execute(f"SELECT * FROM {table}")]}

    def import_(self, data: dict) -> None:
        """Replace each table the export holds; a table it lacks (an export from before the
        table existed) is left as it is. A malformed file (ValueError) changes nothing."""
        rows = self._checked(data)
        with self._lock, self._transaction():
            for table, table_rows in rows.items():
                self._db.execute(f"DELETE FROM {table}")
                for row in table_rows:
                    self._db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES "
                                     f"({', '.join('?' * len(row))})", tuple(row.values()))

    def _checked(self, data) -> dict[str, list[dict]]:
        """The tables of an export, every column name one the table has (they go into SQL)."""
        if not isinstance(data, dict):
            raise ValueError("not a keymux state export (a JSON object of tables)")
        if unknown := set(data) - set(TABLES):
            raise ValueError(f"unknown tables: {', '.join(sorted(unknown))}")
        with self._lock:
            db = self._conn()
            columns = {t: {c[1] for c in db.execute(f"PRAGMA table_info({t})")} for t in data}
        for table, table_rows in data.items():
            if not isinstance(table_rows, list) or not all(
                    isinstance(r, dict) and r and set(r) <= columns[table] for r in table_rows):
                raise ValueError(f"table {table}: rows must be objects of its columns "
                                 f"({', '.join(sorted(columns[table]))})")
        return data

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _transaction(self):
        return _Transaction(self._conn())


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error:  # e.g. the disk filled up at commit: leave no transaction open
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        # SQLite may have rolled back already (SQLITE_FULL does): a second ROLLBACK would
        # raise and hide the error that matters.
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass


def migrate(db: sqlite3.Connection) -> None:
    """Bring an older database's tables up to the schema (columns are only ever added)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
    for name, kind in ADDED_COLUMNS:
        if name not in have:
            db.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")


def _column(value):
    return json.dumps(value) if isinstance(value, (dict, list)) else value


_SPEND_UPSERT = f"""
INSERT INTO spend_day ({', '.join(SPEND_KEY + SPEND_FIELDS)})
VALUES ({', '.join('?' * (len(SPEND_KEY) + len(SPEND_FIELDS)))})
ON CONFLICT ({', '.join(SPEND_KEY)}) DO UPDATE SET
{', '.join(f'{f} = {f} + excluded.{f}' for f in SPEND_FIELDS)}
"""

_USAGE_UPSERT = f"""
INSERT INTO usage_minute (key, minute, provider, {', '.join(USAGE_FIELDS)})
VALUES (?, ?, ?, {', '.join('?' * len(USAGE_FIELDS))})
ON CONFLICT (key, minute) DO UPDATE SET
{', '.join(f'{f} = {f} + excluded.{f}' for f in USAGE_FIELDS)}
"""
