"""The spend ledger: what each finished request cost, per key, client, provider and model,
per day and month (keypool.periods). Pure, in memory, O(1) per request; persisted through
the state store's ``spend_day`` table (the Recorder's batch) and restored at start.

    Ledger.add(wall, key, client, provider, model, usd|None, usage)   per finished attempt
    Ledger.spent(dim, name, period, wall) -> USD          dim: key|client|provider|model
    Ledger.tokens(dim, name, period, wall) -> in + out    period: day|month
    Ledger.tally(dim, name, period, wall) -> Tally        key|client: O(1) running totals
    Ledger.totals(dim, name, period, wall) -> Sums        any dim, every field (scans rows)
    Ledger.period_end(period, wall) -> Unix time          a budget's Retry-After
    Ledger.reserve(key, client, usd, tokens) -> Hold; release(hold)  (budgets: estimates
    Ledger.committed(dim, name, period, wall) -> spent + reserved   held between admit and
    Ledger.committed_tokens(dim, name, period, wall)                 finish)
    Ledger.set_base(own, siblings, sole); own(dim, name, period, wall) -> (usd, tokens)
                                             budgets shared through Redis (see below)
    Ledger.snapshot(wall, fleet=None) -> dict for /_keymux/stats (fleet: other processes'
                                             rows, store/fleetspend.py)
    Ledger.drain() -> {(day, key, client, provider, model): sums} for the store
    Ledger.restore(rows); Ledger.set_periods(periods)       at start; on reload

A request whose price is unknown adds its tokens and counts in ``unknown``, never 0 USD.

Budgets shared through Redis (keypool.shared_redis): each process pushes its **own**
total of a budgeted key or client per period, and adopts the others' into ``remote``. Its
own total is ``base`` (what its origin had in Redis before this run, read once on first
connecting) plus what it spent since it started (the running totals less the rows restored
from SQLite): workers of one host share one SQLite store, so its restored history is
everybody's and is never pushed. A budget counts its own total + the others' + the
restored history that no Redis row held when it connected (``set_base``: a store moved to
Redis mid-period, or a Redis restarted empty); until Redis is first reached, the local
figures alone. A process that owns its store alone (no ``--workers``) claims that history
as its own, so its pushed totals go on as they did.
"""
from __future__ import annotations

from dataclasses import asdict

from .periods import Periods
from .spend_sums import HOT_DIMS, SUM_FIELDS, Hold, Row, Sums, Tally, previous_month, tallies
from .usage import Usage

DIMS = ("key", "client", "provider", "model")
PERIODS = ("day", "month")
NO_CLIENT = "-"         # an open gateway's requests (not a valid client name)
OTHER_MODEL = "other"   # past MAX_MODELS distinct models a day: client input stays bounded
MAX_MODELS = 500
_ZERO = Tally()  # read only


class Ledger:
    def __init__(self, periods: Periods | None = None):
        self.periods = periods or Periods()
        self.rows: dict[Row, Sums] = {}     # every day of this month and the last one
        self._saved: dict[Row, Sums] = {}   # each row as the store was last handed it
        self._restored: dict[Row, Sums] = {}  # what restore() read (spent before this run)
        self._touched: set[Row] = set()     # rows added to since
        self._day = self._month = ""        # the labels _totals are for
        self._totals: dict[tuple[str, str, str], Tally] = {}  # (period, HOT_DIM, name)
        self._targets: dict[Row, tuple[Sums, tuple[Tally, ...]]] = {}  # per row, what add updates
        self._models: set[str] = set()      # distinct models today
        self._reserved: dict[tuple[str, str], float] = {}    # (dim, name) -> USD held
        self._reserved_tokens: dict[tuple[str, str], int] = {}  # (dim, name) -> tokens held
        # other processes' totals (keypool.shared): (period label, dim, name) -> origin ->
        # (usd, tokens); empty unless several processes share budgets through Redis
        self.remote: dict[tuple[str, str, str], dict[str, tuple[float, int]]] = {}
        # this process's own totals in Redis before this run: (label, dim, name) -> (usd,
        # tokens); None until Redis is first reached (then budgets count local figures)
        self.base: dict[tuple[str, str, str], tuple[float, int]] | None = None
        self._restored_totals: dict[tuple[str, str, str], Tally] = {}  # like _totals
        self._gap: dict[tuple[str, str, str], tuple[float, int]] = {}  # see set_base

    # -- the hot path

    def add(self, wall: float, key: str, client: str | None, provider: str,
            model: str | None, usd: float | None, usage: Usage) -> None:
        day = self.periods.day(wall)[2]
        if day != self._day:
            self._roll(day)
        row = (day, key, client or NO_CLIENT, provider, model or "")
        s, tallies = self._targets.get(row) or self._targets_of(row)
        unknown, usd = (1, 0.0) if usd is None else (0, usd)
        tin, tout = usage.input_total, usage.output
        s.usd += usd
        s.requests += 1
        s.unknown += unknown
        s.tokens_in += tin
        s.tokens_out += tout
        s.cache_read += usage.cache_read
        s.cache_write += usage.cache_write
        for t in tallies:  # key and client, per day and month
            t.usd += usd
            t.tokens += tin + tout
            t.requests += 1
            t.unknown += unknown

    def _targets_of(self, row: Row) -> tuple[Sums, tuple[Tally, ...]]:
        if row[4] not in self._models:
            row = row[:4] + (self._bounded(row[4]),)
            if row in self._targets:
                return self._targets[row]
        self._touched.add(row)
        tallies = tuple(self._totals.setdefault((period, dim, name), Tally())
                        for period in PERIODS for dim, name in zip(HOT_DIMS, row[1:3]))
        self._targets[row] = t = (self.rows.setdefault(row, Sums()), tallies)
        return t

    def _bounded(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODELS:
            return OTHER_MODEL
        self._models.add(model)
        return model

    # -- reading

    def tally(self, dim: str, name: str, period: str, wall: float) -> Tally:
        """``dim`` key or client: the running total (O(1); what a budget reads)."""
        self._current(wall)
        return self._totals.get((period, dim, name)) or Tally()

    def totals(self, dim: str, name: str, period: str, wall: float) -> Sums:
        """Every sum, for any dimension (scans the month's rows: not for the hot path)."""
        self._current(wall)
        return self._by(period, dim).get(name) or Sums()

    def _by(self, period: str, dim: str, rows: dict | None = None) -> dict[str, Sums]:
        """Sums per name of ``dim`` over the current day or month, from the rows."""
        i, out = DIMS.index(dim) + 1, {}
        for row, s in (self.rows if rows is None else rows).items():
            if (row[0] == self._day) if period == "day" else (row[0][:7] == self._month):
                out.setdefault(row[i], Sums()).merge(s)
        return out

    def spent(self, dim: str, name: str, period: str, wall: float) -> float:
        if dim in HOT_DIMS:
            t = self.tally(dim, name, period, wall)
            return t.usd if self.base is None else self._shared(t, dim, name, period)[0]
        return self.totals(dim, name, period, wall).usd

    def tokens(self, dim: str, name: str, period: str, wall: float) -> int:
        """Tokens in + out of key or client ``name`` in the period (a daily_tokens budget)."""
        t = self.tally(dim, name, period, wall)
        return t.tokens if self.base is None else self._shared(t, dim, name, period)[1]

    def _shared(self, t: Tally, dim: str, name: str, period: str) -> tuple[float, int]:
        """With Redis reached: own total + history Redis lacks + others' (module doc)."""
        r = self._restored_totals.get((period, dim, name)) or _ZERO
        k = (self._label(period), dim, name)
        bu, bt = self.base.get(k) or (0.0, 0)
        gu, gt = self._gap.get(k) or (0.0, 0)
        ou, ot = self._others(dim, name, period) if self.remote else (0.0, 0)
        return t.usd - r.usd + bu + gu + ou, t.tokens - r.tokens + bt + gt + ot

    def own(self, dim: str, name: str, period: str, wall: float) -> tuple[float, int]:
        """This process's own total (pushed to Redis): base + what it spent since start."""
        t = self.tally(dim, name, period, wall)
        r = self._restored_totals.get((period, dim, name)) or _ZERO
        bu, bt = (self.base or {}).get((self._label(period), dim, name)) or (0.0, 0)
        return bu + t.usd - r.usd, bt + t.tokens - r.tokens

    def set_base(self, own: dict, siblings: dict, sole: bool, wall: float) -> None:
        """Redis first reached: ``own`` (label, dim, name) -> (usd, tokens), this origin's
        totals there; ``siblings``: the other origins' of this same store (workers). The
        restored history beyond both is in no Redis row (a store moved to Redis mid-period,
        a Redis restarted empty): a ``sole`` owner of its store claims it as its own
        (pushed), a worker counts it here only (every worker restored it)."""
        base, gap = dict(own), {}
        self._current(wall)
        for (period, dim, name), r in self._restored_totals.items():
            k = (self._label(period), dim, name)
            (ou, ot), (su, st) = base.get(k, (0.0, 0)), siblings.get(k, (0.0, 0))
            g = (max(0.0, r.usd - ou - su), max(0, r.tokens - ot - st))
            if sole:
                base[k] = (ou + g[0], ot + g[1])
            elif g != (0.0, 0):
                gap[k] = g
        self.base, self._gap = base, gap

    def _label(self, period: str) -> str:
        return self._day if period == "day" else self._month

    def label(self, period: str, wall: float) -> str:
        """The current day's or month's name (``2026-11-30``, ``2026-11``)."""
        day, month = self._current(wall)
        return day if period == "day" else month

    def _others(self, dim: str, name: str, period: str) -> tuple[float, int]:
        by = self.remote.get((self._day if period == "day" else self._month, dim, name))
        if not by:
            return 0.0, 0
        return sum(u for u, _ in by.values()), sum(t for _, t in by.values())

    def committed(self, dim: str, name: str, period: str, wall: float) -> float:
        """Spent in the period plus what requests in flight hold (the budgets' figure)."""
        return self.spent(dim, name, period, wall) + self._reserved.get((dim, name), 0.0)

    def committed_tokens(self, dim: str, name: str, period: str, wall: float) -> int:
        """Tokens in the period plus what requests in flight hold (a daily_tokens budget)."""
        return self.tokens(dim, name, period, wall) + self._reserved_tokens.get((dim, name), 0)

    def period_end(self, period: str, wall: float) -> float:
        return self.periods.day_end(wall) if period == "day" else self.periods.month_end(wall)

    def reserve(self, key: str | None, client: str | None, usd: float, tokens: int = 0) -> Hold:
        hold = Hold(key, client or NO_CLIENT, usd, tokens=tokens)
        for dk in self._hold_keys(hold):
            self._reserved[dk] = self._reserved.get(dk, 0.0) + usd
            if tokens:
                self._reserved_tokens[dk] = self._reserved_tokens.get(dk, 0) + tokens
        return hold

    def release(self, hold: Hold) -> None:
        if hold.released:
            return
        hold.released = True
        for dk in self._hold_keys(hold):
            left = self._reserved.get(dk, 0.0) - hold.usd
            if left > 1e-12:
                self._reserved[dk] = left
            else:
                self._reserved.pop(dk, None)
            if hold.tokens:
                n = self._reserved_tokens.get(dk, 0) - hold.tokens
                if n > 0:
                    self._reserved_tokens[dk] = n
                else:
                    self._reserved_tokens.pop(dk, None)

    def holds(self) -> int:
        """How many (dim, name) pairs hold an estimate now: 0 when nothing is in flight."""
        return len(self._reserved) + len(self._reserved_tokens)

    @staticmethod
    def _hold_keys(hold: Hold) -> list[tuple[str, str]]:
        out = [("client", hold.client)]
        if hold.key:
            out.append(("key", hold.key))
        return out

    def snapshot(self, wall: float, fleet: dict[Row, list] | None = None) -> dict:
        """/_keymux/stats' ``spend``: today and this month, total and by each dimension.
        ``fleet``: the fleet's rows of this month but what this process spent since it
        started (keypool.store.fleetspend), whose live figures are added here."""
        day, month = self._current(wall)
        rows = None if fleet is None else self._with(fleet)
        out = {"timezone": self.periods.timezone, "daily_reset": self.periods.daily_reset,
               "day": day, "day_ends_at": self.periods.day_end(wall),
               "month": month, "month_ends_at": self.periods.month_end(wall)}
        for period, label in (("day", "today"), ("month", "this_month")):
            total, block = Sums(), {}
            for dim in DIMS:
                sums = self._by(period, dim, rows)
                block[f"by_{dim}"] = {name: sums[name].shown() for name in sorted(sums)}
            for s in self._by(period, "provider", rows).values():
                total.merge(s)
            out[label] = {"total": total.shown(), **block}
        return out

    def _with(self, fleet: dict[Row, list]) -> dict[Row, Sums]:
        """``fleet``'s rows plus this run's own spend (the rows less what was restored)."""
        out = {row: Sums(*v) for row, v in fleet.items()}
        for row, s in self.rows.items():
            if row[0][:7] != self._month:
                continue
            mine = Sums(**asdict(s))
            before = self._restored.get(row)
            if before is not None:
                for f in SUM_FIELDS:
                    setattr(mine, f, getattr(mine, f) - getattr(before, f))
            if row in out:
                out[row].merge(mine)
            else:
                out[row] = mine
        return out

    # -- periods, persistence

    def _current(self, wall: float) -> tuple[str, str]:
        day = self.periods.day(wall)[2]
        if day != self._day:
            self._roll(day)
        return self._day, self._month

    def _roll(self, day: str) -> None:
        """A new day (or new periods): rebuild the day's and month's totals from the rows."""
        month = day[:7]
        self._day, self._month = day, month
        self._models = {r[4] for r in self.rows if r[0] == day}
        prev = previous_month(month)
        self.rows = {r: s for r, s in self.rows.items() if r[0][:7] >= prev}
        self._saved = {r: s for r, s in self._saved.items() if r in self.rows}
        self._restored = {r: s for r, s in self._restored.items() if r in self.rows}
        self._totals = tallies(self.rows, day, month)
        self._targets = {}
        self._restored_totals = tallies(self._restored, day, month)

    def set_periods(self, periods: Periods) -> None:
        """A reload changed daily_reset or the time zone: today is re-read at once."""
        if not periods.same_as(self.periods):
            self.periods = periods
            self._day = ""  # the next call rebuilds the totals under the new rule

    def drain(self) -> dict[Row, dict]:
        """What each row gained since the last drain (the store adds it to its row)."""
        out = {}
        for row in self._touched:
            now, before = self.rows.get(row), self._saved.get(row) or Sums()
            if now is None:
                continue
            out[row] = {f: getattr(now, f) - getattr(before, f) for f in SUM_FIELDS}
            self._saved[row] = Sums(**asdict(now))
        self._touched = set()
        self._targets = {}  # the next add of each row marks it touched again
        return out

    def restore(self, rows: list[dict]) -> int:
        """Rows of the store's ``spend_day`` (this month and the last): added to memory."""
        for r in rows:
            row = (r["day"], r["key"], r["client"], r["provider"], r["model"])
            s = self.rows.get(row)
            if s is None:
                s = self.rows[row] = Sums()
            s.merge(Sums(**{f: r.get(f) or 0 for f in SUM_FIELDS}))
            saved = self._saved.setdefault(row, Sums())  # already in the store
            saved.merge(Sums(**{f: r.get(f) or 0 for f in SUM_FIELDS}))
            self._restored.setdefault(row, Sums()).merge(Sums(**{f: r.get(f) or 0
                                                               for f in SUM_FIELDS}))
        self._day = ""
        return len(rows)

    def since_day(self, wall: float) -> str:
        """The first day label worth restoring: the first of last month."""
        return previous_month(self.periods.month_of(wall)) + "-01"
