"""The fleet's request log and usage counters in Redis (``state: {backend: redis}``).

Every gateway process mirrors what its SQLite store gets, so one web UI shows every
process's requests (docs/state.md, *The fleet's log and counters*):

    PREFIX:log:requests           stream, MAXLEN ~ state.log_max; field ``r`` = the row's
                                  JSON (the same row SQLite gets, ``gateway`` = its writer)
    PREFIX:log:audit              stream, MAXLEN ~ state.audit_max (written by the web UI)
    PREFIX:usage:key:HOUR         hash ``MINUTE|KEY|FIELD`` -> sums (usage_minute's), 26 h
    PREFIX:usage:client:HOUR      hash ``BUCKET|CLIENT|FIELD`` (10-minute buckets), 8 days
    PREFIX:usage:last             hash CLIENT -> the newest request's time
    PREFIX:usage:day:DAY          hash ``KEY|FIELD``: today's (UTC) totals per key, 3 days

(HOUR, MINUTE and BUCKET are Unix time // 3600, // 60, // 600; CLIENT "-" for none.)

Off the hot path: the loop hands each second's batch (``Runtime.flush``) to a thread that
writes it in one pipeline. Redis unreachable: the batch is kept in a bounded buffer
(``Pending``: oldest rows dropped past the bound, counted) and retried each second; the
SQLite store keeps every row regardless. Nothing here ever waits on a request.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time

from .base import Batch
from .pending import Pending
from .sqlite import USAGE_FIELDS

logger = logging.getLogger("keymux")

KEY_KEEP_S = 26 * 3600          # the dashboard's day chart, and a little
CLIENT_KEEP_S = 8 * 86400       # the usage page's week, and a day
DAY_KEEP_S = 3 * 86400
CLIENT_BUCKET_S = 600
CLIENT_FIELDS = ("requests", "ok", "client_errors", "server_errors", "tokens_in",
                 "tokens_out", "latency_sum", "latency_n")
MAX_PENDING_ROWS = 5_000        # rows kept while Redis is away (then the oldest go)
MAX_PENDING_BYTES = 16 * 1024 * 1024
FLEET_READ_EVERY_S = 2.0        # how often the fleet's day totals are read back (stats)


def names(prefix: str) -> dict[str, str]:
    return {"requests": f"{prefix}:log:requests", "audit": f"{prefix}:log:audit",
            "key": f"{prefix}:usage:key:", "client": f"{prefix}:usage:client:",
            "last": f"{prefix}:usage:last", "day": f"{prefix}:usage:day:"}


def utc_day(wall: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(wall))


def client_sums(rows: list[dict]) -> dict[tuple[int, str], dict]:
    """(10-minute bucket, client) -> the usage page's sums, from request-log rows."""
    out: dict[tuple[int, str], dict] = {}
    for r in rows:
        k = (int(r["ts"] // CLIENT_BUCKET_S), r.get("client") or "-")
        s = out.setdefault(k, dict.fromkeys(CLIENT_FIELDS, 0))
        status = r.get("status") or 0
        s["requests"] += 1
        s["ok"] += status < 400
        s["client_errors"] += 400 <= status < 500
        s["server_errors"] += status >= 500
        s["tokens_in"] += r.get("tokens_in") or 0
        s["tokens_out"] += r.get("tokens_out") or 0
        if r.get("latency_s") is not None:
            s["latency_sum"] += r["latency_s"]
            s["latency_n"] += 1
    return out


class FleetLog:
    """The mirror thread: ``submit`` from the loop (no I/O), writes in the background."""

    def __init__(self, client, prefix: str, log_max: int, gateway_id: str):
        self.client = client  # a synchronous redis.Redis (used by the thread only)
        self.keys = names(prefix)
        self.log_max = log_max
        self.gateway_id = gateway_id
        self.pending = Pending(MAX_PENDING_ROWS, MAX_PENDING_BYTES)
        self.ok = True
        self.error: str | None = None
        self.mirrored = 0           # rows written to the stream, ever
        self.errors = 0
        self.fleet: dict = {}       # the fleet's day totals, as last read (stats)
        self._fleet_read = 0.0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="keymux-fleetlog", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        """What the SQLite writer gets this second (its rows and per-minute usage)."""
        self._queue.put(Batch(list(batch.requests), dict(batch.usage)))

    def flush(self, timeout: float = 5.0) -> bool:
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def status(self) -> dict:
        return {"ok": self.ok, "error": self.error, "mirrored_rows": self.mirrored,
                "pending_rows": len(self.pending), "dropped_rows": self.pending.dropped_rows,
                "dropped_usage_minutes": self.pending.dropped_minutes, "errors": self.errors,
                "stream": self.keys["requests"], "log_max": self.log_max}

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                item = Batch()  # retry what is kept, read the fleet's totals
            if item is None:
                self._write(Batch())
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            self._write(self._more(item))

    def _more(self, batch: Batch) -> Batch:
        """``batch`` and every batch queued behind it, as one: a Redis that hangs (each try
        waits out its timeout) leaves one batch to write, not a queue growing each second."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch
            if not isinstance(item, Batch):  # a flush or close marker: after this batch
                self._queue.put(item)
                return batch
            batch.requests += item.requests
            for k, sums in item.usage.items():
                mine = batch.usage.setdefault(k, {"provider": sums.get("provider")})
                for f, v in sums.items():
                    if f != "provider":
                        mine[f] = mine.get(f, 0) + v

    def _write(self, batch: Batch) -> None:
        todo = self.pending.merged(batch)
        try:
            if todo:
                self._send(todo)
            if time.monotonic() - self._fleet_read >= FLEET_READ_EVERY_S:
                self._fleet_read = time.monotonic()
                self.fleet = self._read_fleet(time.time())
        except Exception as e:  # Redis away (or a bug): keep within bounds, say so, go on
            self.pending.keep(todo)
            self._failed(e)
            return
        self.pending.clear()
        self.mirrored += len(todo.requests)
        if not self.ok:
            logger.warning("keymux: fleet log: Redis writes again (%d rows dropped meanwhile)",
                           self.pending.dropped_rows)
        self.ok, self.error = True, None

    def _failed(self, e: BaseException) -> None:
        self.errors += 1
        self.error = f"{type(e).__name__}: {e}"[:200]
        if self.ok:
            logger.warning("keymux: fleet log: cannot write to Redis (%s); the request log "
                           "stays in this process's SQLite store, up to %d rows kept to retry",
                           self.error, self.pending.max_rows)
        self.ok = False

    def _send(self, b: Batch) -> None:
        pipe = self.client.pipeline(transaction=False)
        k = self.keys
        for row in b.requests:
            pipe.xadd(k["requests"], {"r": json.dumps({**row, "gateway": row.get(
                "gateway") or self.gateway_id})}, maxlen=self.log_max, approximate=True)
        hours: set[str] = set()
        days: set[str] = set()
        for (key, minute), sums in b.usage.items():
            h = f"{k['key']}{minute // 60}"
            d = f"{k['day']}{utc_day(minute * 60)}"
            hours.add(h)
            days.add(d)
            pipe.hset(h, f"{minute}|{key}|provider", sums.get("provider") or "")
            for f in USAGE_FIELDS:
                v = sums.get(f)
                if v:
                    incr = pipe.hincrbyfloat if isinstance(v, float) else pipe.hincrby
                    incr(h, f"{minute}|{key}|{f}", v)
                    incr(d, f"{key}|{f}", v)
        for h in hours:
            pipe.expire(h, KEY_KEEP_S)
        for d in days:
            pipe.expire(d, DAY_KEEP_S)
        self._client_usage(pipe, b.requests)
        pipe.execute()

    def _client_usage(self, pipe, rows: list[dict]) -> None:
        k = self.keys
        hours: set[str] = set()
        last: dict[str, float] = {}
        for (bucket, client), sums in client_sums(rows).items():
            h = f"{k['client']}{bucket * CLIENT_BUCKET_S // 3600}"
            hours.add(h)
            for f, v in sums.items():
                if v:
                    incr = pipe.hincrbyfloat if isinstance(v, float) else pipe.hincrby
                    incr(h, f"{bucket}|{client}|{f}", v)
        for r in rows:
            c = r.get("client") or "-"
            last[c] = max(last.get(c, 0.0), r["ts"])
        for h in hours:
            pipe.expire(h, CLIENT_KEEP_S)
        if last:
            pipe.hset(k["last"], mapping=last)

    def _read_fleet(self, wall: float) -> dict:
        day = utc_day(wall)
        raw = self.client.hgetall(f"{self.keys['day']}{day}")
        keys: dict[str, dict] = {}
        for field, value in raw.items():
            name, _, f = field.decode().rpartition("|")
            keys.setdefault(name, {})[f] = float(value) if f == "latency_sum" else int(float(value))
        return {"day": day, "as_of": wall, "keys": keys}


class FleetLogCollector:
    """``keymux_fleet_log_up`` and ``keymux_fleet_log_dropped_rows_total`` (at scrape time)."""

    def __init__(self, log: FleetLog):
        self.log = log

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        yield GaugeMetricFamily("keymux_fleet_log_up", "1 while this process's request log "
                                "and usage reach the fleet's Redis stream, 0 while they do not",
                                value=1.0 if self.log.ok else 0.0)
        yield CounterMetricFamily("keymux_fleet_log_dropped_rows", "request-log rows never "
                                  "mirrored to Redis (kept in the local SQLite store)",
                                  value=float(self.log.pending.dropped_rows))
