"""The spend ledger's figures: a row's ``Sums``, a budget's running ``Tally``, a request's ``Hold``."""
from __future__ import annotations

from dataclasses import asdict, dataclass

HOT_DIMS = ("key", "client")  # kept as running totals (budgets read them per request)
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

    def merge(self, other: "Sums") -> None:
        for f in SUM_FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))

    def shown(self) -> dict:
        d = asdict(self)
        d["usd"] = round(self.usd, 8)
        return d


@dataclass(slots=True)
class Tally:
    """A running total for a budget to read per request: four fields, cheap to add to."""
    usd: float = 0.0
    tokens: int = 0      # in + out
    requests: int = 0
    unknown: int = 0


@dataclass(slots=True)
class Hold:
    """An estimate reserved for a request in flight (released once, settled by ``add``)."""
    key: str | None
    client: str
    usd: float
    released: bool = False
    tokens: int = 0       # a daily_tokens budget's estimate


Row = tuple[str, str, str, str, str]  # (day, key, client, provider, model)


def tallies(rows: dict[Row, Sums], day: str, month: str) -> dict[tuple[str, str, str], Tally]:
    """Running totals per (period, key|client, name) of ``rows`` in ``day`` and ``month``."""
    t: dict[tuple[str, str, str], Tally] = {}
    for row, s in rows.items():
        for period, same in (("day", row[0] == day), ("month", row[0][:7] == month)):
            if not same:
                continue
            for dim, name in zip(HOT_DIMS, row[1:3]):
                tally = t.setdefault((period, dim, name), Tally())
                tally.usd += s.usd
                tally.tokens += s.tokens_in + s.tokens_out
                tally.requests += s.requests
                tally.unknown += s.unknown
    return t


def previous_month(month: str) -> str:
    y, m = int(month[:4]), int(month[5:7])
    return f"{y - 1}-12" if m == 1 else f"{y}-{m - 1:02d}"
