"""State that several gateway processes share: the seam between the pool and a backend.

The pool tells a ``SharedState`` when a key's health changes (``cooled``, ``cleared``) and,
before an attempt on a key with an rpm or in-flight limit, asks it to ``reserve`` a slot.
``LocalState`` (the default, ``state: {backend: sqlite}``) does nothing: one process, its own
state, exactly as without this module. ``keypool.shared_redis.RedisState`` publishes changes
to Redis and applies the other processes' to this pool (``apply``), so the pick path reads
only local memory: the mirror, never a round trip.

A change travels as an ``Event`` of plain facts; cooldown ends are Unix times, so each
process maps them onto its own monotonic clock. A key is named by its config name and told
apart by its secret's fingerprint: a process whose key of that name has another secret
ignores the event.

Provider outages and learned budgets travel as events too (keypool.shared_health): the
pool tells the backend through ``outage`` and ``learned``; ``decode`` reads any event,
``apply`` adopts any.
"""
from __future__ import annotations

from dataclasses import dataclass

from .poolstate import DEAD, fingerprint
from .shared_health import LearnEvent, OutageEvent, _num


@dataclass(frozen=True, slots=True)
class Event:
    kind: str          # "cool" (a scope cooled until ``end``) or "clear" (scopes healthy again)
    key: str           # the key's config name
    fp: str            # fingerprint of its secret
    scopes: tuple[str, ...]
    end: float = 0.0   # Unix time the cooldown ends ("cool")
    reason: str = ""   # the outcome that cooled it ("cool")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "key": self.key, "fp": self.fp, "scopes": list(self.scopes),
                "end": self.end, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict) -> "Event":
        return cls(str(d["kind"]), str(d["key"]), str(d["fp"]),
                   tuple(str(s) for s in d.get("scopes") or ()), _num(d.get("end") or 0.0),
                   str(d.get("reason") or ""))


@dataclass(slots=True)
class Slot:
    """A shared reservation on a key (rpm and in-flight), released once its attempt ends."""
    key: str
    token: str


class LocalState:
    """No sharing: every call is a no-op and costs nothing on the hot path."""

    backend = "sqlite"
    shares_limits = False

    def cooled(self, key, scope: str, end_wall: float, reason: str) -> None:
        pass

    def cleared(self, key, scopes: tuple[str, ...]) -> None:
        pass

    def outage(self, provider: str, st) -> None:
        """A provider's outage started, changed (a probe out, its next time) or ended (None)."""

    def learned(self, key) -> None:
        """The upstream told this process ``key``'s remaining budget (keypool.limits)."""

    def needs_slot(self, key, ask=None) -> bool:
        return False

    async def reserve(self, key, est_tokens: int = 0, ask=None) -> tuple[Slot | None, float]:
        """(slot, 0.0) when the key may take the attempt, (None, seconds to wait) if not;
        ``ask``: the client's admission too (keypool.shared_ask), refused as (None, Answer)."""
        return None, 0.0

    def release(self, slot: Slot | None, tokens: int | None = None) -> None:
        pass

    def status(self) -> dict | None:
        """For /_keymux/health and metrics; None: nothing shared, nothing to report."""
        return None

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


LOCAL = LocalState()


def cool_event(key, scope: str, end_wall: float, reason: str) -> Event:
    return Event("cool", key.name, fingerprint(key.spec.secret), (scope,), end_wall, reason)


def clear_event(key, scopes: tuple[str, ...]) -> Event:
    return Event("clear", key.name, fingerprint(key.spec.secret), tuple(scopes))


def decode(d: dict) -> Event | OutageEvent | LearnEvent:
    """An event from its dict; ValueError, KeyError or TypeError when malformed."""
    kind = d["kind"]
    if kind in ("cool", "clear"):
        return Event.from_dict(d)
    if kind in ("outage", "up"):
        return OutageEvent.from_dict(d)
    if kind == "learn":
        return LearnEvent.from_dict(d)
    raise ValueError(f"unknown event kind {kind!r}")


def apply(pool, ev: Event | OutageEvent | LearnEvent) -> bool:
    """Adopt another process's change to a key's health; False when it does not apply here
    (unknown key, another secret, or a cooldown already over)."""
    if not isinstance(ev, Event):
        return ev.apply(pool)
    k = pool.by_name.get(ev.key)
    if k is None or fingerprint(k.spec.secret) != ev.fp:
        return False
    if ev.kind == "clear":
        for scope in ev.scopes:
            k.cool.pop(scope, None)
            k.reason.pop(scope, None)
            k.needs_probe.discard(scope)
        if "" in ev.scopes:
            k.failures_in_row = 0
        return True
    now, wall = pool.clock.monotonic(), pool.clock.wall()
    left = ev.end - wall
    if left <= 0:
        return False
    if ev.reason not in DEAD:
        left = min(left, pool.max_cool)
    for scope in ev.scopes:
        end = now + left
        if end > k.cool.get(scope, 0.0):  # as Pool.cool_down: a shorter one changes nothing
            k.cool[scope] = end
            k.reason[scope] = ev.reason
        k.needs_probe.add(scope)
    return True


def local_events(pool) -> list[Event]:
    """This process's live cooldowns as events: pushed to the backend when it comes back."""
    now, wall = pool.clock.monotonic(), pool.clock.wall()
    return [cool_event(k, scope, wall + (end - now), k.reason.get(scope, "server"))
            for k in pool.by_name.values() for scope, end in k.cool.items() if end > now]
