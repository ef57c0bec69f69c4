"""Provider outages and learned budgets as events between processes (keypool.shared).

An ``OutageEvent`` says a provider is down (since when, when its next probe is due, whether
a probe is out now) or up again; a ``LearnEvent`` says what the upstream told one process
about a key's remaining requests and tokens, and until when. Times travel as Unix times,
each process maps them onto its own monotonic clock. A provider is told apart by its
base_url's fingerprint, a key by its secret's, so a process whose provider or key of that
name is another one ignores the event, as it ignores a malformed or unknown one.

Pure: no I/O here; keypool.shared_redis publishes and stores these (keypool.shared_rows).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from .outage import JITTER, PROBE_FIRST_S, PROBE_MAX_S
from .poolstate import fingerprint

logger = logging.getLogger("keymux")

# A next probe further away than our own cadence allows is a skewed clock or a bad row:
# never let it park a provider longer than a local outage would.
MAX_NEXT_S = PROBE_MAX_S * (1 + JITTER)


def _num(x) -> float:
    v = float(x)
    if not math.isfinite(v):
        raise ValueError("not a finite number")
    return v


@dataclass(frozen=True, slots=True)
class OutageEvent:
    kind: str            # "outage" (down) or "up" (it answers again)
    provider: str
    fp: str              # fingerprint of the provider's base_url
    since: float = 0.0   # Unix time the outage began
    next: float = 0.0    # Unix time the next probe is due
    interval: float = PROBE_FIRST_S
    probing: bool = False  # a probe is out now: hold ours until its verdict

    def to_dict(self) -> dict:
        return {"kind": self.kind, "provider": self.provider, "fp": self.fp,
                "since": self.since, "next": self.next, "interval": self.interval,
                "probing": self.probing}

    @classmethod
    def from_dict(cls, d: dict) -> "OutageEvent":
        if d["kind"] not in ("outage", "up"):
            raise ValueError("not an outage event")
        return cls(str(d["kind"]), str(d["provider"]), str(d["fp"]),
                   _num(d.get("since") or 0.0), _num(d.get("next") or 0.0),
                   _num(d.get("interval") or PROBE_FIRST_S), bool(d.get("probing")))

    def apply(self, pool) -> bool:
        """Adopt another process's outage news; False when it does not apply here."""
        name = self.provider
        if name not in pool.by_provider or provider_fp(pool, name) != self.fp:
            return False
        if self.kind == "up":
            if pool.outages.adopt_end(name) is not None:
                logger.warning("keymux: provider '%s' is back (another process's request "
                               "succeeded); all its keys serve again", name)
            return True
        wall = pool.clock.wall()
        interval = min(max(self.interval, 0.01), PROBE_MAX_S)
        next_in = min(max(self.next - wall, 0.0), MAX_NEXT_S)
        if pool.outages.adopt(name, max(wall - self.since, 0.0), next_in, interval,
                              self.probing):
            pool._forgive(pool.by_provider[name])  # as a local start: the keys are not at fault
            logger.warning("keymux: provider '%s' is down (another process saw most of its keys "
                           "fail); one request at a time probes it, the others get 503", name)
        return True


@dataclass(frozen=True, slots=True)
class LearnEvent:
    kind: ClassVar[str] = "learn"
    key: str
    fp: str
    requests: float | None   # requests left (None: not known)
    requests_until: float    # Unix time that count holds until
    tokens: float | None
    tokens_until: float

    def to_dict(self) -> dict:
        return {"kind": "learn", "key": self.key, "fp": self.fp, "requests": self.requests,
                "requests_until": self.requests_until, "tokens": self.tokens,
                "tokens_until": self.tokens_until}

    @classmethod
    def from_dict(cls, d: dict) -> "LearnEvent":
        def left(v):
            return None if v is None else _num(v)
        return cls(str(d["key"]), str(d["fp"]), left(d.get("requests")),
                   _num(d.get("requests_until") or 0.0), left(d.get("tokens")),
                   _num(d.get("tokens_until") or 0.0))

    def apply(self, pool) -> bool:
        """Adopt what another process learned about a key's budget; this process then
        subtracts its own takes from it (conservative: theirs are already in it)."""
        k = pool.by_name.get(self.key)
        if k is None or _fp(k.spec.secret) != self.fp:
            return False
        now, wall = pool.clock.monotonic(), pool.clock.wall()
        took = False
        for budget, left, until in ((k.limits.requests, self.requests, self.requests_until),
                                    (k.limits.tokens, self.tokens, self.tokens_until)):
            hold = min(until - wall, pool.max_cool)  # as a learned reset: capped at max_s
            if left is not None and hold > 0:
                took = budget.adopt(now, left, hold) or took
        return took


@lru_cache(maxsize=4096)
def _fp(text: str) -> str:
    return fingerprint(text)  # a sha256: learned budgets are told per answer, cache it


def provider_fp(pool, provider: str) -> str:
    return _fp(pool.provider_urls.get(provider, ""))


def outage_event(pool, provider: str, st) -> OutageEvent:
    """This process's outage state of ``provider`` (None: it ended) as an event."""
    fp = provider_fp(pool, provider)
    if st is None or not st.down:
        return OutageEvent("up", provider, fp)
    now, wall = pool.clock.monotonic(), pool.clock.wall()
    return OutageEvent("outage", provider, fp, st.since_wall,
                       wall + max(st.next_probe - now, 0.0), st.interval, st.probe is not None)


def live_outages(pool) -> list[OutageEvent]:
    """The outages this process declared: pushed to the backend when it comes back (one it
    adopted may have ended meanwhile: Redis has the word on those)."""
    return [outage_event(pool, p, st) for p in sorted(pool.outages.down)
            if not (st := pool.outages.state[p]).adopted]


def learn_event(pool, key) -> LearnEvent | None:
    """What this process holds of ``key``'s learned budgets now (its own takes subtracted),
    None when nothing learned is in force."""
    now, wall = pool.clock.monotonic(), pool.clock.wall()
    r, t = key.limits.requests, key.limits.tokens
    rl, tl = r.current(now), t.current(now)
    if rl is None and tl is None:
        return None
    return LearnEvent(key.name, _fp(key.spec.secret),
                      rl, 0.0 if rl is None else wall + (r.until - now),
                      tl, 0.0 if tl is None else wall + (t.until - now))
