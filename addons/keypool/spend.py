"""The spend ledger: what each finished request cost, per key, client, provider and model,
per day and month (keypool.periods). Pure, in memory, O(1) per request; persisted through
the state store's ``spend_day`` table (the Recorder's batch) and restored at start.

    Ledger.add(wall, key, client, provider, model, usd|None, usage)   per finished attempt
    Ledger.spent(dim, name, period, wall) -> USD          dim: key|client|provider|model
    Ledger.totals(dim, name, period, wall) -> Sums        period: day|month
    Ledger.reserve(key, client, usd) -> Hold; release(hold)       (budgets: estimates held
    Ledger.committed(dim, name, period, wall) -> spent + reserved  between admit and finish)
    Ledger.snapshot(wall) -> dict for /_keymux/stats
    Ledger.drain() -> {(day, key, client, provider, model): sums} for the store
    Ledger.restore(rows); Ledger.set_periods(periods)       at start; on reload

A request whose price is unknown adds its tokens and counts in ``unknown``, never 0 USD.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .periods import Periods
from .usage import Usage

DIMS = ("key", "client", "provider", "model")
PERIODS = ("day", "month")
NO_CLIENT = "-"         # an open gateway's requests (not a valid client name)
OTHER_MODEL = "other"   # past MAX_MODELS distinct models a day: client input stays bounded
MAX_MODELS = 500
SUM_FIELDS = ("usd", "requests", "unknown", "tokens_in", "tokens_out", "cache_read",
              "cache_write")


@dataclass(slots=True)
class Sums:
    usd: float = 0.0      # what the priced requests cost
    requests: int = 0     # every request counted, priced or not
    unknown: int = 0      # ... of which the price is unknown
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read: int = 0
    cache_write: int = 0

    def add(self, usd: float | None, u: Usage, requests: int = 1) -> None:
        if usd is None:
            self.unknown += requests
        else:
            self.usd += usd
        self.requests += requests
        self.tokens_in += u.input_total
        self.tokens_out += u.output
        self.cache_read += u.cache_read
        self.cache_write += u.cache_write

    def merge(self, other: "Sums") -> None:
        for f in SUM_FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))

    def shown(self) -> dict:
        d = asdict(self)
        d["usd"] = round(self.usd, 8)
        return d


@dataclass(slots=True)
class Hold:
    """An estimate reserved for a request in flight (released once, settled by ``add``)."""
    key: str | None
    client: str
    usd: float
    released: bool = False


Row = tuple[str, str, str, str, str]  # (day, key, client, provider, model)


class Ledger:
    def __init__(self, periods: Periods | None = None):
        self.periods = periods or Periods()
        self.rows: dict[Row, Sums] = {}     # every day of this month and the last one
        self._dirty: dict[Row, Sums] = {}   # what the store has not been handed yet
        self._day = self._month = ""        # the labels _totals are for
        self._totals: dict[tuple[str, str, str], Sums] = {}  # (period, dim, name)
        self._models: set[str] = set()      # distinct models today
        self._reserved: dict[tuple[str, str], float] = {}    # (dim, name) -> USD held

    # -- the hot path

    def add(self, wall: float, key: str, client: str | None, provider: str,
            model: str | None, usd: float | None, usage: Usage) -> None:
        day = self.periods.day(wall)[2]
        if day != self._day:
            self._roll(day)
        model = self._bounded(model or "")
        row = (day, key, client or NO_CLIENT, provider, model)
        for sums in (self.rows, self._dirty):
            s = sums.get(row)
            if s is None:
                s = sums[row] = Sums()
            s.add(usd, usage)
        t = self._totals
        for period in PERIODS:
            for dim, name in zip(DIMS, row[1:]):
                s = t.get((period, dim, name))
                if s is None:
                    s = t[(period, dim, name)] = Sums()
                s.add(usd, usage)

    def _bounded(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODELS:
            return OTHER_MODEL
        self._models.add(model)
        return model

    # -- reading

    def totals(self, dim: str, name: str, period: str, wall: float) -> Sums:
        self._current(wall)
        return self._totals.get((period, dim, name)) or Sums()

    def spent(self, dim: str, name: str, period: str, wall: float) -> float:
        return self.totals(dim, name, period, wall).usd

    def committed(self, dim: str, name: str, period: str, wall: float) -> float:
        """Spent in the period plus what requests in flight hold (the budgets' figure)."""
        return self.spent(dim, name, period, wall) + self._reserved.get((dim, name), 0.0)

    def period_end(self, period: str, wall: float) -> float:
        return self.periods.day_end(wall) if period == "day" else self.periods.month_end(wall)

    def reserve(self, key: str | None, client: str | None, usd: float) -> Hold:
        hold = Hold(key, client or NO_CLIENT, usd)
        for dk in self._hold_keys(hold):
            self._reserved[dk] = self._reserved.get(dk, 0.0) + usd
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

    @staticmethod
    def _hold_keys(hold: Hold) -> list[tuple[str, str]]:
        out = [("client", hold.client)]
        if hold.key:
            out.append(("key", hold.key))
        return out

    def snapshot(self, wall: float) -> dict:
        """/_keymux/stats' ``spend``: today and this month, total and by each dimension."""
        day, month = self._current(wall)
        out = {"timezone": self.periods.timezone, "daily_reset": self.periods.daily_reset,
               "day": day, "day_ends_at": self.periods.day_end(wall),
               "month": month, "month_ends_at": self.periods.month_end(wall)}
        for period, label in (("day", "today"), ("month", "this_month")):
            block: dict = {"total": self._sum(period, "provider").shown()}
            for dim in DIMS:
                block[f"by_{dim}"] = {name: s.shown() for (p, d, name), s in
                                      sorted(self._totals.items()) if p == period and d == dim}
            out[label] = block
        return out

    def _sum(self, period: str, dim: str) -> Sums:
        total = Sums()
        for (p, d, _), s in self._totals.items():
            if p == period and d == dim:
                total.merge(s)
        return total

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
        prev = _previous_month(month)
        self.rows = {r: s for r, s in self.rows.items() if r[0][:7] >= prev}
        t: dict[tuple[str, str, str], Sums] = {}
        for row, s in self.rows.items():
            for period, same in (("day", row[0] == day), ("month", row[0][:7] == month)):
                if not same:
                    continue
                for dim, name in zip(DIMS, row[1:]):
                    t.setdefault((period, dim, name), Sums()).merge(s)
        self._totals = t

    def set_periods(self, periods: Periods) -> None:
        """A reload changed daily_reset or the time zone: today is re-read at once."""
        if not periods.same_as(self.periods):
            self.periods = periods
            self._day = ""  # the next call rebuilds the totals under the new rule

    def drain(self) -> dict[Row, dict]:
        out = {row: asdict(s) for row, s in self._dirty.items()}
        self._dirty = {}
        return out

    def restore(self, rows: list[dict]) -> int:
        """Rows of the store's ``spend_day`` (this month and the last): added to memory."""
        for r in rows:
            row = (r["day"], r["key"], r["client"], r["provider"], r["model"])
            s = self.rows.get(row)
            if s is None:
                s = self.rows[row] = Sums()
            s.merge(Sums(**{f: r.get(f) or 0 for f in SUM_FIELDS}))
        self._day = ""
        return len(rows)

    def since_day(self, wall: float) -> str:
        """The first day label worth restoring: the first of last month."""
        return _previous_month(self.periods.month_of(wall)) + "-01"


def _previous_month(month: str) -> str:
    y, m = int(month[:4]), int(month[5:7])
    return f"{y - 1}-12" if m == 1 else f"{y}-{m - 1:02d}"
