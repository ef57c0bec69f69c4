"""The key pool: eligibility and selection over the keys' live state (keypool.keystate).

All methods are synchronous and O(keys of one provider); the event loop calls them between
awaits, so a pick and its acquire cannot interleave with another flow's.

Cooldowns have a scope: ``""`` is the whole key (auth, quota, server errors), a model name
is the (key, model) pair (rate limits). When a cooldown runs out the scope is *half-open*:
exactly one request probes it while the others keep away; its success reopens the scope.

A provider whose keys fail together is down, not its keys (``keypool.outage``): its keys are
not cooled for it, one request at a time probes it and the others get ``ProviderOutage``.
Every cooldown but a dead key's (auth, quota: ``auth_error_s``) is capped at ``max_s``.
"""
from __future__ import annotations

import logging
import math
import random

from .clock import Clock
from .config import Config
from .globs import GlobSet
from . import poolstate
from .keylog import KeyLog
from .keystate import KeyState, Lease, new_state
from .periods import Periods
from .outage import WINDOW_S, Outages
from .shared import LOCAL
from .strategies import STRATEGIES

from .poolstate import DEAD, WHOLE_KEY, fingerprint  # noqa: F401  (re-exported)

logger = logging.getLogger("keymux")


def _renames(old: dict[str, KeyState], config: Config) -> dict[str, KeyState]:
    """New name -> the state of the key it renames: same secret, old name gone, and no
    other candidate on either side (two keys sharing a secret carry nothing)."""
    names = {spec.name for spec in config.keys}
    gone: dict[str, list[KeyState]] = {}
    for k in old.values():
        if k.name not in names:
            gone.setdefault(k.spec.secret, []).append(k)
    if not gone:
        return {}
    new: dict[str, list[str]] = {}
    for spec in config.keys:
        if spec.name not in old and spec.secret in gone:
            new.setdefault(spec.secret, []).append(spec.name)
    return {n[0]: gone[s][0] for s, n in new.items() if len(n) == 1 and len(gone[s]) == 1}


class NoKeyAvailable(Exception):
    """No key can take this request now.

    ``retry_after`` is None when no key could ever serve it (answer 404), else the seconds
    until the soonest key may take it (queue, or answer 429 with Retry-After).
    """

    def __init__(self, message: str, retry_after: float | None, budget: bool = False):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.budget = budget  # every key that serves it is at its money budget


class ProviderOutage(NoKeyAvailable):
    """The provider is down (most of its keys failed together): answer 503 at once."""


class Pool:
    def __init__(self, config: Config, clock: Clock, rng: random.Random | None = None):
        self.clock = clock
        self.rng = rng or random.Random()
        self.by_name: dict[str, KeyState] = {}
        self.by_provider: dict[str, list[KeyState]] = {}
        self.outages = Outages(clock, self.rng)
        self.keylog = KeyLog(clock)  # told only when a key's state changes
        # more reasons a key is held back, for stats: f(key, now) -> list of held_back rows
        # (a hook for holds kept outside the pool, e.g. money budgets)
        self.hold_checks: list = []
        # a key's money budget (keypool.budgets): f(key name) -> 0.0, or seconds until its
        # period resets; asked only for keys that have a budget
        self.budget_wait = None
        # other processes sharing this pool (keypool.shared): told of health changes
        self.shared = LOCAL
        self.outages.notify = lambda provider, st: self.shared.outage(provider, st)
        self.update(config)

    def update(self, config: Config) -> None:
        """Adopt a new config; a key keeps its state while its name and secret are unchanged,
        and across a rename (its old name gone, the same secret under exactly one new name)."""
        old = self.by_name
        periods = Periods.of(config.routing)
        if not periods.same_as(getattr(self, "periods", None)):
            self.periods = periods  # one object for every key: a changed reset applies at once
        fresh: dict[str, KeyState] = {}
        renamed = _renames(old, config)
        for spec in config.keys:
            prev = old.get(spec.name) or renamed.get(spec.name)
            if prev is not None and prev.spec.secret == spec.secret:
                prev.spec, prev.globs = spec, GlobSet(spec.models)
                prev.limits.update_limits(spec.rpm, spec.tpm)
                prev.daily.periods = self.periods
                fresh[spec.name] = prev
            else:
                fresh[spec.name] = new_state(spec, self.periods)
        kept = {id(k) for k in fresh.values()}
        for prev in old.values():
            if id(prev) not in kept:
                prev.retired = True
        self.by_name = fresh
        self.by_provider = {}
        for state in fresh.values():
            self.by_provider.setdefault(state.spec.provider, []).append(state)
        self.provider_urls = {n: p.base_url for n, p in config.providers.items()}
        self.choose = STRATEGIES[config.routing.strategy]
        self.max_cool = float(config.routing.cooldown.max_s)
        self.outages.probe_timeout_s = float(config.routing.timeout_s) + 1.0
        for name in list(self.outages.state):
            if name not in self.by_provider:
                self.outages.forget(name, tell=False)

    def pick(self, provider: str, model: str | None, exclude: frozenset[str] | set[str] = frozenset(),
             est_tokens: int = 1) -> Lease:
        """Choose and acquire a key, or raise NoKeyAvailable (ProviderOutage: provider down)."""
        if provider in self.outages.down:
            wait = self.outages.wait(provider)
            if wait > 0:
                raise ProviderOutage(f"provider '{provider}' is failing on most of its keys; "
                                     "keymux is probing it and answers again as soon as it "
                                     "recovers", wait)
        now = self.clock.monotonic()
        cands: list[KeyState] = []
        soonest, budget_soonest = math.inf, math.inf
        for k in self.by_provider.get(provider, ()):
            if not k.spec.enabled or k.name in exclude or not k.allows(model):
                continue
            until = max(k.blocked_until(model, now), now + k.limits.wait_for(now, est_tokens))
            if until > now:
                soonest = min(soonest, until)
                continue
            if k.spec.budget is not None and self.budget_wait is not None:
                wait = self.budget_wait(k.name)
                if wait > 0:
                    budget_soonest = min(budget_soonest, now + wait)
                    continue
            cands.append(k)
        if not cands:
            what = f"model '{model}'" if model else "this request"
            if budget_soonest < math.inf and soonest == math.inf:
                raise NoKeyAvailable(f"every key of provider '{provider}' that serves {what} "
                                     "is at its budget until its period resets",
                                     budget_soonest - now, budget=True)
            soonest = min(soonest, budget_soonest)
            if soonest < math.inf:
                raise NoKeyAvailable(f"every key of provider '{provider}' that serves {what} "
                                     "is cooling down or at its limits", soonest - now)
            raise NoKeyAvailable(f"no enabled key of provider '{provider}' serves {what}", None)
        key = self.choose(cands, self.rng) if len(cands) > 1 else cands[0]
        lease = self._acquire(key, model, now, est_tokens)
        if provider in self.outages.down:
            lease.provider_probe = self.outages.probing(provider, lease)
        return lease

    def lease_named(self, name: str) -> Lease | None:
        """Acquire one named key whatever its state: an admin's test of exactly that key."""
        key = self.by_name.get(name)
        return None if key is None else self._acquire(key, None, self.clock.monotonic(), 1)

    def revive(self, key: KeyState) -> None:
        """A test call with ``key`` succeeded: its whole-key cooldown ends (a model's rate
        limit is not disproved by a model list, so those stay)."""
        if WHOLE_KEY in key.needs_probe:
            self.keylog.recovered(key.name, (WHOLE_KEY,), "a test call succeeded")
        key.cool.pop(WHOLE_KEY, None)
        key.reason.pop(WHOLE_KEY, None)
        key.needs_probe.discard(WHOLE_KEY)
        key.failures_in_row = 0
        self.shared.cleared(key, (WHOLE_KEY,))

    def _acquire(self, key: KeyState, model: str | None, now: float, est_tokens: int) -> Lease:
        probes = tuple(s for s in ((WHOLE_KEY, model) if model else (WHOLE_KEY,))
                       if s in key.needs_probe)
        if probes:
            key.probing.update(probes)
            self.keylog.probe(key.name, probes)
        key.in_flight += 1
        key.requests += 1
        key.last_used = now
        return Lease(key, key.limits.reserve(now, est_tokens), probes)

    def unlease(self, lease: Lease, hold_s: float) -> None:
        """Give back a lease whose shared slot was refused (keypool.shared): as if never
        acquired, and the key held back ``hold_s`` in this process."""
        key = lease.key
        key.in_flight -= 1
        key.requests -= 1
        key.probing.difference_update(lease.probes)
        if lease.provider_probe:
            self.outages.settled(key.spec.provider, lease)
        key.limits.settle(lease.reservation, 0)
        key.shared_hold = self.clock.monotonic() + hold_s

    def release(self, lease: Lease, *, outcome: str, latency: float,
                tokens_in: int = 0, tokens_out: int = 0) -> None:
        """End a lease: ``outcome`` is a policy outcome ("ok", "rate_limited", ...)."""
        key = lease.key
        key.in_flight -= 1  # the slots first: nothing below may keep them if it fails
        if lease.slot is not None:  # settles its shared tpm reservation as the local one
            self.shared.release(lease.slot, tokens_in + tokens_out
                                if outcome in ("ok", "client_error") else None)
            lease.slot = None
        key.probing.difference_update(lease.probes)
        if lease.provider_probe:
            self.outages.settled(key.spec.provider, lease)
        key.latency_sum += latency
        if outcome in ("ok", "client_error"):
            key.limits.settle(lease.reservation, tokens_in + tokens_out)
        key.tokens_in += tokens_in
        key.tokens_out += tokens_out
        key.daily.add(self.clock.wall(), requests=1, tokens_in=tokens_in, tokens_out=tokens_out)
        if outcome == "ok":
            key.successes += 1
            key.failures_in_row = 0
            if lease.probes:
                key.needs_probe.difference_update(lease.probes)
                self.keylog.recovered(key.name, lease.probes)
                self.shared.cleared(key, lease.probes)
        elif outcome != "cancelled":  # a client that left says nothing about the key
            key.failures += 1
            key.failures_by_class[outcome] = key.failures_by_class.get(outcome, 0) + 1

    def observe(self, lease: Lease, outcome: str) -> bool:
        """Tell the outage detector an attempt's outcome (before any cooldown); False when
        a server failure is the provider's outage, so the key must not be cooled for it."""
        provider = lease.key.spec.provider
        if outcome in ("ok", "client_error"):  # the provider answers: it is up
            ended = self.outages.success(provider) if provider in self.outages.state else None
            if ended is not None:
                logger.warning("keymux: provider '%s' is back after %.1f s (%d probes, %d failed "
                               "attempts during the outage); all its keys serve again", provider,
                               self.clock.monotonic() - ended.since, ended.probes, ended.failures)
            return True
        if outcome != "server":
            return True
        keys = self.by_provider.get(provider, ())
        enabled = sum(1 for k in keys if k.spec.enabled)
        blame = self.outages.failure(provider, lease.key.name, enabled, lease)
        if blame == "start":
            self._forgive(keys)
            st = self.outages.state[provider]
            logger.warning("keymux: provider '%s' is down: server errors from %d of its %d keys "
                           "within %g s; one request at a time probes it, the others get 503",
                           provider, len(st.failed), enabled, WINDOW_S)
        return blame == "key"

    @staticmethod
    def _forgive(keys) -> None:
        """Undo the server cooldowns that were the provider's outage, not the keys' faults."""
        for k in keys:
            if k.reason.get(WHOLE_KEY) == "server":
                k.cool.pop(WHOLE_KEY, None)
                k.reason.pop(WHOLE_KEY, None)
                k.needs_probe.discard(WHOLE_KEY)
            k.failures_in_row = 0

    def providers(self) -> dict[str, dict]:
        """Per configured provider: ``{"state": "ok"}`` or its outage (see Outages.snapshot)."""
        down = self.outages.snapshot()
        return {p: down.get(p, {"state": "ok"}) for p in sorted(self.by_provider)}

    def cool_down(self, key: KeyState, scope: str, seconds: float, outcome: str,
                  status: int | str | None = None, hint: str = "") -> None:
        """Rest ``key`` (for ``scope``) ``seconds`` from now, at most ``max_s`` unless the key
        is dead (auth, quota); it is probed once afterwards. ``status`` and ``hint`` (the
        header the time came from) only name the cause in the log line."""
        if outcome not in DEAD:
            seconds = min(seconds, self.max_cool)
        now = self.clock.monotonic()
        end = now + seconds
        prev = key.cool.get(scope, 0.0)
        if prev <= now or key.reason.get(scope) != outcome:  # a change of state: say so
            self.keylog.cooling(key.name, scope, seconds, outcome, status, hint)
        if end > prev:
            key.cool[scope] = end
            key.reason[scope] = outcome
            self.shared.cooled(key, scope, self.clock.wall() + seconds, outcome)
        key.needs_probe.add(scope)
        if outcome == "server":
            key.failures_in_row += 1

    def soonest(self, provider: str, model: str | None) -> float | None:
        """Seconds until some key of ``provider`` could serve ``model`` again (None: never)."""
        now = self.clock.monotonic()
        waits = [max(0.0, k.blocked_until(model, now) - now) for k in self.by_provider.get(provider, ())
                 if k.spec.enabled and k.allows(model)]
        return min(waits) if waits else None

    def reset_cooldown(self, name: str) -> bool:
        key = self.by_name.get(name)
        if key is None:
            return False
        if any(end > self.clock.monotonic() for end in key.cool.values()) or key.needs_probe:
            self.keylog.recovered(name, (WHOLE_KEY,), "an operator reset its cooldowns")
        scopes = tuple({WHOLE_KEY, *key.cool, *key.needs_probe})
        key.cool.clear()
        key.reason.clear()
        key.needs_probe.clear()
        key.failures_in_row = 0
        self.keylog.reset(name)
        self.shared.cleared(key, scopes)
        self.outages.forget(key.spec.provider)  # the operator says: use it now
        return True

    # -- durable state and stats: keypool.poolstate -------------------------------------

    def export_state(self) -> list[dict]:
        return poolstate.export_state(self)

    def restore_state(self, rows: list[dict]) -> int:
        return poolstate.restore_state(self, rows)

    def snapshot(self) -> list[dict]:
        """Per-key facts for stats, metrics and the UI: names and masks, never secrets."""
        now, wall = self.clock.monotonic(), self.clock.wall()
        return [poolstate.describe(k, now, wall, self.hold_checks) for k in self.by_name.values()]
