"""The fleet's request log, usage and audit log, read from Redis (``state: {backend: redis}``).

Every gateway process appends its request-log rows and usage to Redis
(``keypool.store.fleetlog`` names the streams and hashes); this module copies them,
incrementally, into an in-memory SQLite database with the gateway's own schema, so every
page's SQL runs unchanged on the fleet's rows. At most one refresh a second; the streams'
caps (``state.log_max``, ``state.audit_max``) bound the copy.

Spend (``spend_day``) is copied from the per-day hashes of ``keypool.store.fleetspend``:
every process's rows of the last KEEP_DAYS days, summed per row.

Redis unreachable: each page falls back to this host's SQLite files and says so
(``FleetStore.note``). The saved key states (``key_state``) are always read from the local
file.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import sqlite3
import threading
import time
from pathlib import Path

from keypool.store import fleetspend
from keypool.store.fleetlog import CLIENT_BUCKET_S, CLIENT_FIELDS, CLIENT_KEEP_S, KEY_KEEP_S, names
from keypool.spend_sums import SUM_FIELDS
from keypool.store.sqlite import REQUEST_FIELDS, SCHEMA, USAGE_FIELDS

from .auditlog import SCHEMA as AUDIT_SCHEMA, AuditError, AuditLog
from .store import Store

logger = logging.getLogger("keymux.ui")
REFRESH_S = 1.0
READ_COUNT = 5000     # stream entries read per call
SPEND_REREAD_S = 30.0  # days before yesterday change only as a process restarts: reread seldom
# what the fleet's copy holds; spend_day has a "requests" column: match the table only
FLEET_TABLES = re.compile(r"\bFROM\s+(requests|usage_minute|audit|spend_day)\b"
                          r"|table_info\((requests|audit)\)")
EXTRA_SCHEMA = f"""
ALTER TABLE requests ADD COLUMN sid INTEGER;
CREATE INDEX requests_sid ON requests (sid);
CREATE TABLE client_usage (bucket INTEGER, client TEXT, {', '.join(f'{f} REAL' for f in CLIENT_FIELDS)},
                           PRIMARY KEY (bucket, client));
ALTER TABLE audit ADD COLUMN sid INTEGER;
ALTER TABLE audit ADD COLUMN writer TEXT;
"""


def _sid(entry_id: bytes) -> int:
    ms, _, seq = entry_id.decode().partition("-")
    return int(ms) * 1_000_000 + int(seq or 0)


def _split(field: bytes) -> tuple[int, str, str]:
    """``TIME|NAME|FIELD`` (a name may hold a ``|``)."""
    t, _, rest = field.decode().partition("|")
    name, _, f = rest.rpartition("|")
    return int(t), name, f


class Mirror:
    """One copy of the fleet's rows per (url, prefix), shared by the UI's threads."""

    def __init__(self, client, prefix: str):
        self.client = client
        self.keys = names(prefix)
        self.db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self.db.executescript(SCHEMA + AUDIT_SCHEMA + EXTRA_SCHEMA)
        self.lock = threading.Lock()
        self.ok = False
        self.error: str | None = "not read yet"
        self._at = float("-inf")
        self._last = {"requests": "0", "audit": "0"}
        self._hours: dict[str, set[int]] = {"key": set(), "client": set()}
        self._prefix = prefix
        self._spend_read: dict[str, float] = {}  # day label -> when its hash was copied

    def query(self, sql: str, params) -> list[tuple]:
        with self.lock:
            try:
                return self.db.execute(sql, params).fetchall()
            except sqlite3.DatabaseError:
                return []

    def refresh(self) -> bool:
        """Copy what is new in Redis (at most once a second); False: Redis unreachable."""
        with self.lock:
            if time.monotonic() - self._at < REFRESH_S:
                return self.ok
            self._at = time.monotonic()
            try:
                self._stream("requests", self._add_request)
                self._stream("audit", self._add_audit)
                self._usage(time.time())
                self._spend(time.time())
            except Exception as e:  # Redis away, or a row it holds is not ours: say so
                if self.ok:
                    logger.warning("keymux ui: cannot read the fleet's log from Redis (%s); "
                                   "showing this host's", e)
                self.ok, self.error = False, f"{type(e).__name__}: {e}"[:200]
                return False
            self.ok, self.error = True, None
            return True

    def _stream(self, which: str, add) -> None:
        key = self.keys[which]
        while True:
            entries = self.client.xrange(key, f"({self._last[which]}", "+", count=READ_COUNT)
            for entry_id, fields in entries:
                try:
                    add(_sid(entry_id), json.loads(fields[b"r"]))
                except (ValueError, KeyError, TypeError):
                    pass  # a malformed entry is skipped, never shown half-read
                self._last[which] = entry_id.decode()
            if len(entries) < READ_COUNT:
                break
        first = self.client.xrange(key, "-", "+", count=1)
        table = "requests" if which == "requests" else "audit"
        # rows the stream's cap trimmed (or a Redis that restarted empty) leave the copy too
        self.db.execute(f"DELETE FROM {table} WHERE sid < ?",
                        (_sid(first[0][0]) if first else 1 << 62,))

    def _add_request(self, sid: int, r: dict) -> None:
        fields = [f for f in REQUEST_FIELDS if f in r]
        values = [json.dumps(r[f]) if isinstance(r[f], (dict, list)) else r[f] for f in fields]
        self.db.execute(f"INSERT INTO requests (sid, {', '.join(fields)}) VALUES "
                        f"(?, {', '.join('?' * len(fields))})", (sid, *values))

    def _add_audit(self, sid: int, r: dict) -> None:
        self.db.execute("INSERT INTO audit (sid, ts, action, target, detail, session, address,"
                        " writer) VALUES (?,?,?,?,?,?,?,?)",
                        (sid, r["ts"], r["action"], r["target"], r["detail"], r["session"],
                         r["address"], r.get("writer")))

    def _usage(self, now: float) -> None:
        hour = int(now // 3600)
        for kind, keep, apply in (("key", KEY_KEEP_S, self._key_hour),
                                  ("client", CLIENT_KEEP_S, self._client_hour)):
            first = int((now - keep) // 3600)
            loaded = self._hours[kind]
            # the current and the last hour change; older ones were read once
            todo = [h for h in range(first, hour + 1) if h not in loaded or h >= hour - 1]
            pipe = self.client.pipeline(transaction=False)
            for h in todo:
                pipe.hgetall(f"{self.keys[kind]}{h}")
            for h, raw in zip(todo, pipe.execute()):
                apply(h, raw)
                loaded.add(h)
            loaded.difference_update({h for h in loaded if h < first})
        self.db.execute("DELETE FROM usage_minute WHERE minute < ?", (int((now - KEY_KEEP_S) // 60),))
        self.db.execute("DELETE FROM client_usage WHERE bucket < ?",
                        (int((now - CLIENT_KEEP_S) // CLIENT_BUCKET_S),))

    def _spend(self, now: float) -> None:
        """Every process's spend rows of the kept days, summed per row. Day labels are the
        gateways' (their time zone): the UTC date +-1 covers them."""
        days = fleetspend.days_back(time.strftime("%Y-%m-%d", time.gmtime(now)),
                                    fleetspend.KEEP_DAYS + 1)
        recent = set(days[-4:])
        todo = [d for d in days if d in recent
                or time.monotonic() - self._spend_read.get(d, float("-inf")) >= SPEND_REREAD_S]
        pipe = self.client.pipeline(transaction=False)
        for d in todo:
            pipe.hgetall(fleetspend.day_key(self._prefix, d))
        for d, raw in zip(todo, pipe.execute()):
            rows: dict[tuple, list] = {}
            for field, value in raw.items():
                try:
                    _, row, sums = fleetspend.decode(field, value)
                except (ValueError, TypeError):
                    continue  # not a row of ours: skipped, never shown half-read
                rows[row] = [a + b for a, b in zip(rows[row], sums)] if row in rows else sums
            self.db.execute("DELETE FROM spend_day WHERE day = ?", (d,))
            self.db.executemany(
                f"INSERT INTO spend_day (day, key, client, provider, model, {', '.join(SUM_FIELDS)})"
                f" VALUES (?, ?, ?, ?, ?, {', '.join('?' * len(SUM_FIELDS))})",
                [(d, *row, *sums) for row, sums in rows.items()])
            self._spend_read[d] = time.monotonic()
        self.db.execute("DELETE FROM spend_day WHERE day < ?", (days[0],))
        for d in [d for d in self._spend_read if d < days[0]]:
            del self._spend_read[d]

    def _key_hour(self, hour: int, raw: dict) -> None:
        rows: dict[tuple[int, str], dict] = {}
        for field, value in raw.items():
            minute, key, f = _split(field)
            rows.setdefault((minute, key), {})[f] = value.decode()
        self.db.execute("DELETE FROM usage_minute WHERE minute >= ? AND minute < ?",
                        (hour * 60, hour * 60 + 60))
        self.db.executemany(
            f"INSERT INTO usage_minute (key, minute, provider, {', '.join(USAGE_FIELDS)}) VALUES"
            f" (?, ?, ?, {', '.join('?' * len(USAGE_FIELDS))})",
            [(key, minute, s.get("provider", ""), *(float(s.get(f, 0)) for f in USAGE_FIELDS))
             for (minute, key), s in rows.items()])

    def _client_hour(self, hour: int, raw: dict) -> None:
        rows: dict[tuple[int, str], dict] = {}
        for field, value in raw.items():
            bucket, client, f = _split(field)
            rows.setdefault((bucket, client), {})[f] = float(value)
        lo, hi = hour * 3600 // CLIENT_BUCKET_S, (hour + 1) * 3600 // CLIENT_BUCKET_S
        self.db.execute("DELETE FROM client_usage WHERE bucket >= ? AND bucket < ?", (lo, hi))
        self.db.executemany(
            f"INSERT INTO client_usage (bucket, client, {', '.join(CLIENT_FIELDS)}) VALUES"
            f" (?, ?, {', '.join('?' * len(CLIENT_FIELDS))})",
            [(b, c, *(s.get(f, 0) for f in CLIENT_FIELDS)) for (b, c), s in rows.items()])

    def last_seen(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.client.hgetall(self.keys["last"]).items()}


class FleetStore(Store):
    """``webui.store.Store`` over the fleet's rows; the local file when Redis is away."""

    fleet = True

    def __init__(self, path: Path, mirror: Mirror):
        super().__init__(path)
        self.mirror = mirror
        self.note: str | None = None  # why this page shows this host's rows only

    def exists(self) -> bool:
        return self.mirror.ok or super().exists()

    def query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        if FLEET_TABLES.search(sql):
            if self.mirror.refresh():
                return self.mirror.query(sql, params)
            self.note = self.mirror.error or "Redis unreachable"
        return super().query(sql, params)

    def per_client(self, since: float) -> dict | None:
        """The usage page's sums from the fleet's 10-minute client buckets (None: Redis away)."""
        if not self.mirror.refresh():
            self.note = self.mirror.error or "Redis unreachable"
            return None
        rows = self.mirror.query(
            "SELECT client, SUM(requests), SUM(ok), SUM(client_errors), SUM(server_errors),"
            " SUM(tokens_in), SUM(tokens_out), SUM(latency_sum), SUM(latency_n)"
            " FROM client_usage WHERE bucket >= ? GROUP BY client",
            (int(since // CLIENT_BUCKET_S),))
        try:
            last = self.mirror.last_seen()
        except Exception:
            last = {}
        return {(None if c == "-" else c): {
            "requests": int(n), "ok": int(ok), "client_errors": int(e4),
            "server_errors": int(e5), "tokens_in": int(ti), "tokens_out": int(to),
            "avg_latency_s": (ls / ln) if ln else None, "last_ts": last.get(c)}
            for c, n, ok, e4, e5, ti, to, ls, ln in rows if n}


class FleetAuditLog(AuditLog):
    """The audit log written to this host's ``audit.db`` and to the fleet's stream; read
    from the stream (the local file while Redis is away)."""

    fleet = True

    def __init__(self, path: Path, mirror: Mirror, audit_max: int):
        super().__init__(path)
        self.mirror, self.audit_max = mirror, audit_max
        self.writer = f"{socket.gethostname()}:{os.getpid()}"
        self.dropped = 0      # rows the stream never got (kept in audit.db)
        self.note: str | None = None

    def write(self, action, target, detail, session, address, retention_days) -> None:
        try:
            super().write(action, target, detail, session, address, retention_days)
        finally:  # a full local disk still leaves the fleet's record
            self._mirror(action, target, detail, session, address)

    def _mirror(self, action, target, detail, session, address) -> None:
        row = {"ts": self.clock(), "action": action, "target": target[:300],
               "detail": detail[:300], "session": session, "address": address,
               "writer": self.writer}
        try:
            self.mirror.client.xadd(self.mirror.keys["audit"], {"r": json.dumps(row)},
                                    maxlen=self.audit_max, approximate=True)
        except Exception as e:  # the change is made and in audit.db: count, never fail it
            self.dropped += 1
            self.note = f"{type(e).__name__}: {e}"[:200]
            logger.warning("keymux ui: audit row not mirrored to Redis (%s); kept in %s",
                           self.note, self.path)

    def _query(self, sql: str, params: list) -> list[tuple]:
        if self.mirror.refresh():
            return self.mirror.query(sql, params)
        self.note = self.mirror.error or "Redis unreachable"
        return super()._query(sql, params)


def mirror_for(app, state) -> Mirror:
    """The app's one mirror of ``state``'s url and prefix (a changed section, a new one)."""
    import redis
    mirrors = app.extensions.setdefault("keymux_fleet", {})
    k = (state.url, state.prefix)
    if k not in mirrors:
        client = redis.Redis.from_url(state.url, socket_timeout=1.0, socket_connect_timeout=0.5)
        mirrors[k] = Mirror(client, state.prefix)
    return mirrors[k]


__all__ = ["AuditError", "FleetAuditLog", "FleetStore", "Mirror", "mirror_for"]
