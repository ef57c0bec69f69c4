"""Client-side rate limits: hold a request back before upstream would answer 429.

Pure and synchronous: methods take ``now`` (monotonic; ``wall_now`` is Unix time) so tests drive
time by hand, and the event loop calls them between awaits, so no locks. On the hot path, running
sums and head purging keep checks amortised O(1); only 'how long until enough has expired' searches,
in O(log n) over a Fenwick tree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .periods import Periods

DAY = 86_400.0
_EPS = 1e-9  # float slack when comparing partial sums of fractional amounts


@dataclass(slots=True, eq=False)
class Entry:
    """A handle on one recorded event; ``pos`` is None once it has left its window."""
    ts: float
    amount: float
    pos: int | None


class _Fenwick:
    """Prefix sums over a growing array, so 'when has `need` expired' costs O(log n), not O(n)."""

    def __init__(self, values: list[float] = ()):
        self.tree = [0.0]  # 1-based
        for v in values:
            self.append(v)

    def append(self, value: float) -> None:
        i, s = len(self.tree), value
        j, stop = i - 1, i - (i & -i)
        while j > stop:
            s += self.tree[j]
            j -= j & -j
        self.tree.append(s)

    def add(self, pos: int, delta: float) -> None:
        tree, i, n = self.tree, pos + 1, len(self.tree)
        while i < n:
            tree[i] += delta
            i += i & -i

    def find(self, target: float) -> int:
        """Smallest 0-based position whose prefix sum reaches ``target`` (values are >= 0)."""
        pos, n = 0, len(self.tree) - 1
        step = 1 << n.bit_length()
        while step:
            nxt = pos + step
            if nxt <= n and self.tree[nxt] < target:
                pos, target = nxt, target - self.tree[nxt]
            step >>= 1
        return min(pos, n - 1)


class Window:
    """Sliding window of weighted events over `span` seconds: rpm weighs 1 a request, tpm tokens."""

    def __init__(self, limit: float | None, span: float = 60.0):
        self.limit, self.span = limit, span
        self._entries: list[Entry] = []  # oldest first; [:_head] have expired
        self._head = 0
        self._sum = 0.0
        self._tree = _Fenwick()  # every entry's amount, expired ones frozen as they left
        self._gone = 0.0  # the tree's total over the expired prefix, so purging is O(1)

    def used(self, now: float) -> float:
        self._purge(now)
        return self._sum

    def wait_for(self, now: float, amount: float = 1.0) -> float:
        self._purge(now)
        if self.limit is None:
            return 0.0
        # More than the whole limit would never fit: let it through alone, on an empty window.
        need = self._sum - (self.limit - amount if amount <= self.limit else 0.0)
        if need <= _EPS:
            return 0.0
        entry = self._entries[self._head]
        if entry.amount < need - _EPS:  # the oldest alone is not enough (rare for rpm): search
            entry = self._entries[self._tree.find(self._gone + need - _EPS)]
        return max(0.0, entry.ts + self.span - now)

    def add(self, now: float, amount: float = 1.0) -> Entry:
        self._purge(now)
        amount = max(0.0, amount)
        entry = Entry(now, amount, len(self._entries))
        self._entries.append(entry)
        self._tree.append(amount)
        self._sum += amount
        return entry

    def adjust(self, entry: Entry, amount: float) -> None:
        amount = max(0.0, amount)
        if entry.pos is not None:  # an expired entry no longer counts anywhere
            self._tree.add(entry.pos, amount - entry.amount)
            self._sum += amount - entry.amount
        entry.amount = amount

    def _purge(self, now: float) -> None:
        entries, cutoff, head = self._entries, now - self.span, self._head
        while head < len(entries) and entries[head].ts <= cutoff:
            e = entries[head]
            self._gone += e.amount
            self._sum -= e.amount
            e.pos = None
            head += 1
        self._head = head
        if head == len(entries):
            self._sum = 0.0  # drop float drift whenever the window empties
        if self._head > 32 and 2 * self._head > len(entries):
            self._compact()

    def _compact(self) -> None:
        # Paid for by the purges since the last compaction, so still amortised O(1).
        self._entries = self._entries[self._head:]
        self._head, self._gone = 0, 0.0
        for i, e in enumerate(self._entries):
            e.pos = i
        self._tree = _Fenwick([e.amount for e in self._entries])


NO_RESET_HOLD_S = 1.0


class _Budget:
    """What upstream said is left until its reset; forgotten after the reset."""

    def __init__(self):
        self.left: float | None = None
        self.until = -math.inf
        self.generation = 0  # lets a settle tell whether its learning is still current

    def current(self, now: float) -> float | None:
        return self.left if now < self.until else None

    def learn(self, now: float, remaining: int | None, reset_s: float | None, span: float) -> None:
        if remaining is None:
            return
        self.left = float(remaining)
        # No reset header: we cannot know when the budget frees, and parking a key for a
        # whole window on a guess idles it long after the upstream has room. Hold back
        # only briefly; the next answer (or a 429's Retry-After) says more.
        self.until = now + (NO_RESET_HOLD_S if reset_s is None else max(0.0, reset_s))
        self.generation += 1

    def adopt(self, now: float, left: float, hold_s: float) -> bool:
        """Another process learned this budget (keypool.shared_health): its word wins unless
        ours is lower for the same window (theirs may be older than ours)."""
        until = now + hold_s
        mine = self.current(now)
        if mine is not None and mine <= left and until <= self.until + 1.0:
            return False
        self.left, self.until = float(left), until
        self.generation += 1  # a settle no longer corrects a charge made before it
        return True

    def take(self, now: float, amount: float) -> int:
        # Returns the generation charged (-1: none in force), for settle to match against.
        if self.current(now) is None:
            return -1
        self.left -= amount  # may go negative; a settle gives back exactly what was taken
        return self.generation

    def wait_for(self, now: float, amount: float) -> float:
        left = self.current(now)
        return 0.0 if left is None or left >= amount else self.until - now


@dataclass(slots=True)
class Reservation:
    tpm_entry: Entry
    est_tokens: int
    tokens_generation: int  # the learned token budget's generation when it was charged
    settled: bool = False


class KeyLimits:
    """Per-key rpm, tpm and learned upstream budgets."""

    def __init__(self, rpm: int | None, tpm: int | None):
        self.rpm, self.tpm = Window(rpm), Window(tpm)
        self.requests, self.tokens = _Budget(), _Budget()

    def wait_for(self, now: float, est_tokens: int) -> float:
        return max(self.rpm.wait_for(now, 1), self.tpm.wait_for(now, est_tokens),
                   self.requests.wait_for(now, 1), self.tokens.wait_for(now, est_tokens))

    def waits(self, now: float) -> dict[str, float]:
        """Seconds each limit holds a one-request, one-token call back (stats: held_back)."""
        return {"rpm": self.rpm.wait_for(now, 1), "tpm": self.tpm.wait_for(now, 1),
                "learned_requests": self.requests.wait_for(now, 1),
                "learned_tokens": self.tokens.wait_for(now, 1)}

    def reserve(self, now: float, est_tokens: int) -> Reservation:
        self.rpm.add(now, 1)
        entry = self.tpm.add(now, est_tokens)
        self.requests.take(now, 1)
        charged = self.tokens.take(now, est_tokens)
        return Reservation(entry, est_tokens, charged)

    def settle(self, res: Reservation, actual_tokens: int) -> None:
        if res.settled:
            return
        res.settled = True
        self.tpm.adjust(res.tpm_entry, actual_tokens)
        # A newer upstream answer already counted the real usage: only correct our own charge.
        if self.tokens.generation == res.tokens_generation:
            self.tokens.left += res.est_tokens - actual_tokens

    def learn(self, now: float, remaining_requests: int | None, requests_reset_s: float | None,
              remaining_tokens: int | None, tokens_reset_s: float | None) -> None:
        self.requests.learn(now, remaining_requests, requests_reset_s, self.rpm.span)
        self.tokens.learn(now, remaining_tokens, tokens_reset_s, self.tpm.span)

    def update_limits(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm.limit, self.tpm.limit = rpm, tpm

    def snapshot(self, now: float) -> dict:
        def left(b: _Budget) -> int | None:
            v = b.current(now)
            return None if v is None else max(0, int(v))
        return {"rpm_used": round(self.rpm.used(now)), "rpm_limit": self.rpm.limit,
                "tpm_used": round(self.tpm.used(now)), "tpm_limit": self.tpm.limit,
                "learned_requests_left": left(self.requests),
                "learned_tokens_left": left(self.tokens)}


_BUDGET_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def estimate_tokens(body: dict | None, body_len: int) -> int:
    """Pessimistic cost of a request: ~4 characters a prompt token, plus the completion budget."""
    completion = 256
    if isinstance(body, dict):
        for name in _BUDGET_FIELDS:
            v = body.get(name)
            if isinstance(v, int) and not isinstance(v, bool):
                completion = max(0, v)
                break
    return max(1, -(-max(0, body_len) // 4) + completion)


class ClientRate:
    """Per-client requests-per-minute, answered by the gateway itself with 429 + Retry-After."""

    def __init__(self):
        self._windows: dict[str, Window] = {}

    def check(self, client: str, rpm: int | None, now: float) -> float:
        if rpm is None:
            return 0.0
        w = self._windows.get(client)
        if w is None:
            w = self._windows[client] = Window(rpm)
        w.limit = rpm  # follows config reloads, keeping history
        wait = w.wait_for(now, 1)
        if wait == 0.0:
            w.add(now, 1)
        return wait

    def forget_except(self, names: set[str]) -> None:
        self._windows = {n: w for n, w in self._windows.items() if n in names}


def next_daily_reset(wall_now: float, hhmm: str) -> float:
    """Unix time of the next HH:MM UTC strictly after ``wall_now`` (Unix days are 86400 s)."""
    h, m = (int(x) for x in hhmm.split(":"))
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise ValueError(f"bad time of day {hhmm!r}")
    t = math.floor(wall_now / DAY) * DAY + h * 3600 + m * 60
    return t if t > wall_now else t + DAY


class DailyCounters:
    """Usage counters that restart each day at routing.daily_reset, in routing.timezone.

    The day is read from the pool's shared ``Periods`` (keypool.periods), so a reload that
    changes the reset time or the time zone moves every key's day at once; counters kept
    under the same day's name carry over."""

    def __init__(self, periods: Periods | str = "00:00"):
        self.periods = Periods(periods) if isinstance(periods, str) else periods
        self.day = ""      # the name of the day the counters belong to
        self.since = 0.0
        self.requests = self.tokens_in = self.tokens_out = 0

    def add(self, wall_now: float, requests: int = 0, tokens_in: int = 0, tokens_out: int = 0) -> None:
        self._roll(wall_now)
        self.requests += requests
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out

    def today(self, wall_now: float) -> dict:
        self._roll(wall_now)
        return {"requests": self.requests, "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out, "since": self.since}

    def _roll(self, wall_now: float) -> None:
        start, _, day = self.periods.day(wall_now)
        if day != self.day:
            self.requests = self.tokens_in = self.tokens_out = 0
            self.day = day
        self.since = start
