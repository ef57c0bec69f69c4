"""Which day and month a moment belongs to: ``routing.daily_reset`` in ``routing.timezone``.

A day starts at ``daily_reset`` (local "HH:MM") and is named by the local date it starts
on; a month starts at ``daily_reset`` on the 1st and is named "YYYY-MM". So the day
"2026-03-31" of a 06:00 reset runs to 06:00 on April 1st, and belongs to March. Local
times are read with zoneinfo: across a DST change a day is 23 or 25 hours long; a reset
time that does not exist that night (02:30 when clocks jump 02:00 -> 03:00) falls at the
moment the clocks jump, one that exists twice at its first occurrence.

The gateway (pool counters, the spend ledger, budgets) and the web UI read "today" from
this one place. A ``Periods`` is immutable: a reload that changes ``daily_reset`` or the
time zone builds a new one and every reader uses it at once. Pure; the time is passed in.
"""
from __future__ import annotations

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = dt.timezone.utc


@lru_cache(maxsize=64)
def zone(name: str) -> dt.tzinfo:
    return UTC if name == "UTC" else ZoneInfo(name)


def valid_zone(name: str) -> bool:
    if not name or len(name) > 64 or name.startswith("/") or ".." in name:
        return False
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


class Periods:
    """``day_of``/``month_of`` are called per request: the current day and month are
    kept as [start, end) windows, so a call inside them is two comparisons."""

    __slots__ = ("daily_reset", "timezone", "_tz", "_h", "_m", "_day", "_month")

    def __init__(self, daily_reset: str = "00:00", timezone: str = "UTC"):
        h, m = (int(x) for x in daily_reset.split(":"))
        if not (0 <= h <= 23 and 0 <= m <= 59):
            raise ValueError(f"bad time of day {daily_reset!r}")
        self.daily_reset, self.timezone = daily_reset, timezone
        self._tz, self._h, self._m = zone(timezone), h, m
        self._day: tuple[float, float, str] = (0.0, 0.0, "")    # start, end, label
        self._month: tuple[float, float, str] = (0.0, 0.0, "")

    @classmethod
    def of(cls, routing) -> "Periods":
        """From a config's ``routing`` section."""
        return cls(routing.daily_reset, getattr(routing, "timezone", "UTC"))

    def same_as(self, other: "Periods | None") -> bool:
        return other is not None and (self.daily_reset, self.timezone) == (
            other.daily_reset, other.timezone)

    # -- the day

    def day(self, wall: float) -> tuple[float, float, str]:
        """(start, end, "YYYY-MM-DD") of the day ``wall`` is in."""
        d = self._day
        if d[0] <= wall < d[1]:
            return d
        date = self._local_date(wall)
        start = self._at(date)
        if start > wall:
            date -= dt.timedelta(days=1)
            start = self._at(date)
        end = self._at(date + dt.timedelta(days=1))
        self._day = d = (start, end, date.isoformat())
        return d

    def day_of(self, wall: float) -> str:
        return self.day(wall)[2]

    def day_start(self, wall: float) -> float:
        return self.day(wall)[0]

    def day_end(self, wall: float) -> float:
        """When the day ``wall`` is in ends: the next reset (a budget's Retry-After)."""
        return self.day(wall)[1]

    # -- the month

    def month(self, wall: float) -> tuple[float, float, str]:
        """(start, end, "YYYY-MM") of the month ``wall`` is in."""
        m = self._month
        if m[0] <= wall < m[1]:
            return m
        first = dt.date.fromisoformat(self.day_of(wall)).replace(day=1)
        nxt = (first + dt.timedelta(days=32)).replace(day=1)
        self._month = m = (self._at(first), self._at(nxt), first.isoformat()[:7])
        return m

    def month_of(self, wall: float) -> str:
        return self.month(wall)[2]

    def month_start(self, wall: float) -> float:
        return self.month(wall)[0]

    def month_end(self, wall: float) -> float:
        return self.month(wall)[1]

    # -- local time

    def _local_date(self, wall: float) -> dt.date:
        return dt.datetime.fromtimestamp(wall, self._tz).date()

    def _at(self, date: dt.date) -> float:
        """Unix time of ``daily_reset`` on the local ``date``: a repeated time at its first
        occurrence, a time in a DST gap at the jump."""
        local = dt.datetime(date.year, date.month, date.day, self._h, self._m, tzinfo=self._tz)
        first, second = local.timestamp(), local.replace(fold=1).timestamp()
        if first <= second:   # an ordinary or repeated time: its first occurrence
            return first
        # In a gap: fold=0 reads the time with the offset before the change (later instant),
        # fold=1 with the one after (earlier instant); the jump lies between: use it.
        return _gap_end(second, first, self._tz)


def _gap_end(lo: float, hi: float, tz: dt.tzinfo) -> float:
    """The instant in [lo, hi] at which the UTC offset changes (the clocks jump)."""
    off = dt.datetime.fromtimestamp(lo, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, tz).utcoffset() == off:
            lo = mid
        else:
            hi = mid
    return float(hi)
