"""The key pool: per-key live state, eligibility and selection.

All methods are synchronous and O(keys of one provider); the event loop calls them between
awaits, so a pick and its acquire cannot interleave with another flow's.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from .clock import Clock
from .config import Config, KeySpec
from .globs import GlobSet
from .redact import mask
from .strategies import STRATEGIES


@dataclass(eq=False, slots=True)
class KeyState:
    spec: KeySpec
    masked: str = ""
    globs: GlobSet = field(default_factory=GlobSet)
    in_flight: int = 0
    requests: int = 0
    successes: int = 0
    failures: int = 0
    latency_sum: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cooldown_until: float = 0.0  # monotonic seconds; 0 = not cooling
    cooldown_reason: str = ""
    last_used: float = -math.inf
    rr_current: float = 0.0
    retired: bool = False  # removed from the config; finishes its in-flight requests only

    @property
    def name(self) -> str:
        return self.spec.name

    def allows(self, model: str | None) -> bool:
        return not self.globs or model is None or self.globs.matches(model)

    def state(self, now: float) -> str:
        if not self.spec.enabled:
            return "disabled"
        if self.cooldown_until > now:
            return "dead" if self.cooldown_reason == "auth" else "cooling"
        return "ok"


def _new_state(spec: KeySpec) -> KeyState:
    return KeyState(spec=spec, masked=mask(spec.secret), globs=GlobSet(spec.models))


class NoKeyAvailable(Exception):
    """No key can take this request now.

    ``retry_after`` is None when no key could ever serve it (answer 404), else the seconds
    until the soonest cooling key recovers (answer 429 with Retry-After).
    """

    def __init__(self, message: str, retry_after: float | None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Pool:
    def __init__(self, config: Config, clock: Clock, rng: random.Random | None = None):
        self.clock = clock
        self.rng = rng or random.Random()
        self.by_name: dict[str, KeyState] = {}
        self.by_provider: dict[str, list[KeyState]] = {}
        self.update(config)

    def update(self, config: Config) -> None:
        """Adopt a new config; a key keeps its state while its name and secret are unchanged."""
        old = self.by_name
        fresh: dict[str, KeyState] = {}
        for spec in config.keys:
            prev = old.get(spec.name)
            if prev is not None and prev.spec.secret == spec.secret:
                prev.spec, prev.globs = spec, GlobSet(spec.models)
                fresh[spec.name] = prev
            else:
                fresh[spec.name] = _new_state(spec)
        for name, prev in old.items():
            if fresh.get(name) is not prev:
                prev.retired = True
        self.by_name = fresh
        self.by_provider = {}
        for state in fresh.values():
            self.by_provider.setdefault(state.spec.provider, []).append(state)
        self.choose = STRATEGIES[config.routing.strategy]

    def pick(self, provider: str, model: str | None, exclude: frozenset[str] = frozenset()) -> KeyState:
        """Choose and acquire a key, or raise NoKeyAvailable."""
        now = self.clock.monotonic()
        cands: list[KeyState] = []
        soonest = math.inf
        for k in self.by_provider.get(provider, ()):
            if not k.spec.enabled or k.name in exclude or not k.allows(model):
                continue
            if k.cooldown_until > now:
                soonest = min(soonest, k.cooldown_until)
                continue
            cands.append(k)
        if not cands:
            what = f"model '{model}'" if model else "this request"
            if soonest < math.inf:
                raise NoKeyAvailable(f"every key of provider '{provider}' that serves {what} "
                                     "is cooling down", soonest - now)
            raise NoKeyAvailable(f"no enabled key of provider '{provider}' serves {what}", None)
        key = self.choose(cands, self.rng) if len(cands) > 1 else cands[0]
        key.in_flight += 1
        key.requests += 1
        key.last_used = now
        return key

    def release(self, key: KeyState, *, ok: bool, latency: float,
                tokens_in: int = 0, tokens_out: int = 0) -> None:
        key.in_flight -= 1
        key.latency_sum += latency
        key.tokens_in += tokens_in
        key.tokens_out += tokens_out
        if ok:
            key.successes += 1
        else:
            key.failures += 1

    def snapshot(self) -> list[dict]:
        """Per-key facts for stats, metrics and the UI: names and masks, never secrets."""
        now = self.clock.monotonic()
        out = []
        for k in self.by_name.values():
            done = k.successes + k.failures
            out.append({
                "name": k.name,
                "provider": k.spec.provider,
                "key": k.masked,
                "state": k.state(now),
                "cooldown_s": round(max(0.0, k.cooldown_until - now), 3),
                "weight": k.spec.weight,
                "in_flight": k.in_flight,
                "requests": k.requests,
                "successes": k.successes,
                "failures": k.failures,
                "avg_latency_s": round(k.latency_sum / done, 4) if done else None,
                "tokens_in": k.tokens_in,
                "tokens_out": k.tokens_out,
            })
        return out
