"""The fleet's spend per day (``spend_day``) in Redis (``state: {backend: redis}``).

    PREFIX:spend_day:DAY   hash per day label (the ledger's: ``routing.daily_reset`` in
                           ``routing.timezone``), field ``["ID", key, client, provider,
                           model]`` (JSON) -> ``[usd, requests, unknown, tokens_in,
                           tokens_out, cache_read, cache_write]`` (JSON); expires
                           KEEP_DAYS after its last write (the ledger keeps this month and
                           the last)

``ID`` names the process's spend: ``HOST[/wN]@ORIGIN`` (ORIGIN: a hash of its host and
``state_dir``; ``/wN``: worker N of ``keymux run --workers``), the same across restarts.
Each field holds exactly what that ID has spent: an ``HSET`` of the running total, never
an increment, so a batch written twice counts once. A process only ever writes what it
itself spent: its first write reads back its own fields (what it spent before a restart)
and adds its new spend to them; rows restored from its SQLite store are never written (they
are in Redis already, under this ID, or under the ID of the worker that spent them when
several workers share one store). The fleet's spend of a row is the sum over its IDs.

Used by the fleet log's thread only (store/fleetlog.py), once a second; never on a request.
"""
from __future__ import annotations

import datetime as dt
import json
import time

from ..spend_sums import SUM_FIELDS

KEEP_DAYS = 63                  # this month and the last, as the ledger keeps
KEEP_S = KEEP_DAYS * 86400
PAST_REFRESH_S = 60.0           # days before yesterday: re-read this often (late flushes)
NF = len(SUM_FIELDS)

Row = tuple[str, str, str, str, str]  # (day, key, client, provider, model)


def day_key(prefix: str, day: str) -> str:
    return f"{prefix}:spend_day:{day}"


def days_back(today: str, n: int = KEEP_DAYS) -> list[str]:
    """Day labels from ``n`` days before ``today`` to the day after it (a time zone ahead)."""
    d = dt.date.fromisoformat(today)
    return [(d - dt.timedelta(days=i)).isoformat() for i in range(n, -2, -1)]


def decode(field: bytes, value: bytes) -> tuple[str, tuple[str, str, str, str], list[float]]:
    """(ID, (key, client, provider, model), sums) of one hash entry (ValueError: not ours)."""
    who, key, client, provider, model = json.loads(field)
    sums = json.loads(value)
    if len(sums) != NF:
        raise ValueError("not a spend row")
    return (str(who), (str(key), str(client), str(provider), str(model)),
            [float(sums[0]), *(int(v) for v in sums[1:])])


def _plus(a: list[float] | None, b: list[float]) -> list[float]:
    return list(b) if a is None else [x + y for x, y in zip(a, b)]


class FleetSpend:
    """This process's spend per row (what it had before a restart + this run's), written
    to Redis; the fleet's rows of the month, read back for ``/_keymux/stats``."""

    def __init__(self, prefix: str, spend_id: str):
        self.prefix, self.id = prefix, spend_id
        self.base: dict[Row, list[float]] = {}  # what this ID had spent before this run
        self.run: dict[Row, list[float]] = {}   # this run's spend (the ledger's drains)
        self.dirty: set[Row] = set()            # rows to write
        self.based = False                      # base read back (first write)
        self.labels: tuple[str, str] = ("", "")  # the ledger's day and month, set by flush
        # the fleet's rows of this month but this run's own spend (the loop adds the
        # ledger's live figures): set by read(), replaced whole, never mutated
        self.view: dict[Row, list[float]] | None = None
        self.view_month = ""
        self.view_at: float | None = None      # when (Unix time)
        self._days: dict[str, dict[Row, list[float]]] = {}  # per day, the others' rows
        self._days_month, self._days_read = "", 0.0          # whose month, read when

    def add(self, drained: dict[Row, dict]) -> None:
        """The ledger's deltas of one flush (Batch.spend)."""
        for row, sums in drained.items():
            self.run[row] = _plus(self.run.get(row), [sums.get(f) or 0 for f in SUM_FIELDS])
            self.dirty.add(row)

    def write(self, client, pipe) -> None:
        """Queue the changed rows' totals on ``pipe`` (the fleet log's pipeline); the first
        time, read this ID's earlier spend back first."""
        if not self.based:
            self._read_base(client)
        days = set()
        for row in self.dirty:
            total = _plus(self.base.get(row), self.run.get(row) or [0] * NF)
            pipe.hset(day_key(self.prefix, row[0]), self._field(row),
                      json.dumps(total, separators=(",", ":")))
            days.add(row[0])
        for day in days:
            pipe.expire(day_key(self.prefix, day), KEEP_S)

    def rewrite(self) -> None:
        """Redis was away: it may have restarted empty; every row this ID holds goes again."""
        self.dirty.update(self.base)
        self.dirty.update(self.run)

    def written(self) -> None:
        self.dirty.clear()
        self._prune()

    def _field(self, row: Row) -> str:
        return json.dumps([self.id, *row[1:]], separators=(",", ":"))

    def _read_base(self, client) -> None:
        today = self.labels[0] or dt.date.today().isoformat()
        days = days_back(today)
        pipe = client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(day_key(self.prefix, day))
        base: dict[Row, list[float]] = {}
        for day, raw in zip(days, pipe.execute()):
            for field, value in raw.items():
                try:
                    who, rest, sums = decode(field, value)
                except (ValueError, TypeError):
                    continue
                if who == self.id:
                    base[(day, *rest)] = sums
        self.base, self.based = base, True
        self.dirty.update(r for r in self.run if r in base)  # their totals changed

    def _prune(self) -> None:
        """Rows past KEEP_DAYS leave memory (their hashes expire)."""
        if not self.labels[0]:
            return
        first = days_back(self.labels[0])[0]
        for d in (self.base, self.run):
            for row in [r for r in d if r[0] < first]:
                del d[row]

    def read(self, client) -> None:
        """The fleet's rows of this month (every ID's but this run's spend), into ``view``.

        Yesterday, today and tomorrow are read each time; earlier days only every
        PAST_REFRESH_S (they are final but for a late flush): a month of rows costs ~10 µs
        each to decode, in a thread that holds the GIL."""
        day, month = self.labels
        if not day or not self.based:
            return
        days = [f"{month}-{i:02d}" for i in range(1, 32)]
        now = time.monotonic()
        whole = month != self._days_month or now - self._days_read >= PAST_REFRESH_S
        recent = set(days_back(day, 1))
        wanted = days if whole else [d for d in days if d in recent]
        pipe = client.pipeline(transaction=False)
        for d in wanted:
            pipe.hgetall(day_key(self.prefix, d))
        fresh = {d: self._others(d, raw) for d, raw in zip(wanted, pipe.execute())}
        if whole:  # only once read: a failed read leaves the cache (and its age) as it was
            self._days, self._days_month, self._days_read = fresh, month, now
        else:
            self._days.update(fresh)
        view: dict[Row, list[float]] = {}
        for rows in self._days.values():  # rows hold their day: no two days collide
            view.update(rows)
        for row, sums in self.base.items():  # this ID's earlier spend: from memory
            if row[0][:7] == month:
                view[row] = _plus(view.get(row), sums)  # a new list: the cache stays as read
        self.view, self.view_month, self.view_at = view, month, time.time()

    def _others(self, day: str, raw: dict) -> dict[Row, list[float]]:
        """One day's hash: every other ID's rows, summed per row."""
        rows: dict[Row, list[float]] = {}
        for field, value in raw.items():
            try:
                who, rest, sums = decode(field, value)
            except (ValueError, TypeError):
                continue
            if who != self.id:
                row = (day, *rest)
                rows[row] = _plus(rows.get(row), sums)
        return rows
