"""A key's live state in the pool (cooldowns, probes, counters) and a request's lease on it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import KeySpec
from .globs import GlobSet
from .limits import DailyCounters, KeyLimits, Reservation
from .periods import Periods
from .poolstate import WHOLE_KEY
from .redact import mask

IN_FLIGHT_POLL_S = 0.05  # a key at max_in_flight frees up when a request ends; look again soon


@dataclass(eq=False, slots=True)
class KeyState:
    spec: KeySpec
    masked: str = ""
    globs: GlobSet = field(default_factory=GlobSet)
    limits: KeyLimits = field(default_factory=lambda: KeyLimits(None, None))
    daily: DailyCounters = field(default_factory=DailyCounters)
    in_flight: int = 0
    requests: int = 0
    successes: int = 0
    failures: int = 0
    failures_by_class: dict[str, int] = field(default_factory=dict)
    latency_sum: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cool: dict[str, float] = field(default_factory=dict)  # scope -> monotonic end
    reason: dict[str, str] = field(default_factory=dict)  # scope -> outcome that cooled it
    needs_probe: set[str] = field(default_factory=set)
    probing: set[str] = field(default_factory=set)
    failures_in_row: int = 0
    last_used: float = -math.inf
    last_status: int | str | None = None  # the last attempt's status, or why it had none
    rr_current: float = 0.0
    retired: bool = False  # removed from the config; finishes its in-flight requests only
    shared_hold: float = 0.0  # monotonic end: other processes hold its rpm/in-flight slots

    @property
    def name(self) -> str:
        return self.spec.name

    def allows(self, model: str | None) -> bool:
        return not self.globs or model is None or self.globs.matches(model)

    def blocked_until(self, model: str | None, now: float) -> float:
        """0.0 if this key may take a request for ``model`` now, else when it may."""
        until = 0.0
        for scope in (WHOLE_KEY, model) if model else (WHOLE_KEY,):
            end = self.cool.get(scope, 0.0)
            if end > now:
                until = max(until, end)
            elif scope in self.probing:  # half-open and its one probe is still out
                until = max(until, now + IN_FLIGHT_POLL_S)
        if self.spec.max_in_flight and self.in_flight >= self.spec.max_in_flight:
            until = max(until, now + IN_FLIGHT_POLL_S)
        if self.shared_hold > now:
            until = max(until, self.shared_hold)
        return until

    def state(self, now: float) -> str:
        if not self.spec.enabled:
            return "disabled"
        if self.cool.get(WHOLE_KEY, 0.0) > now:
            return "dead" if self.reason.get(WHOLE_KEY) == "auth" else "cooling"
        # a model-scoped cooldown leaves the key serving every other model: still "ok",
        # the cooling models are listed beside it (snapshot's cooling_models)
        return "ok"


def new_state(spec: KeySpec, periods: Periods) -> KeyState:
    return KeyState(spec=spec, masked=mask(spec.secret), globs=GlobSet(spec.models),
                    limits=KeyLimits(spec.rpm, spec.tpm), daily=DailyCounters(periods))


@dataclass(slots=True)
class Lease:
    """One request's hold on a key: released exactly once."""
    key: KeyState
    reservation: Reservation
    probes: tuple[str, ...]
    provider_probe: bool = False  # this attempt probes a provider in outage
    slot: object = None  # a shared reservation (keypool.shared.Slot), released with the lease
