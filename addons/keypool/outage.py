"""Provider outages: when most keys of a provider fail at once, the provider is down.

Pure: the clock and the randomness are injected. ``Pool`` feeds it every attempt's outcome
and asks it before each pick.

A provider enters *outage* when, within ``WINDOW_S`` and with no success of any of its keys
in between, server-class failures (5xx, 408, refused, reset, timeout) came from
``threshold(n)`` distinct keys of its ``n`` enabled keys: a strict majority, at least 2
(the one key of a single-key provider). 4xx answers (401, 429, ...) are never evidence:
they say something about a key, and they prove the provider answers.

During an outage keys are not cooled for server failures (the provider is the one
resting); clients get a fast 503 while one request at a time probes the provider, the
first arriving after ``next_probe``, on a cadence that starts at ``PROBE_FIRST_S`` and grows
by ``PROBE_GROWTH`` per failed probe up to ``PROBE_MAX_S``, each jittered ±25% so that
several gateways do not probe in step. Any answer that proves the provider serves (a
success, or a client error) ends the outage at once.

Several processes (keypool.shared_health): ``notify`` is told of every change (start, a
probe out, a failed probe's next time, the end) and ``adopt``/``adopt_end`` take another
process's, so the fleet answers 503 together and, while another process's probe is out,
holds its own (at most ``REMOTE_PROBE_HOLD_S``: that process may have died).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .clock import Clock

WINDOW_S = 10.0        # failures further apart than this are not one event
PROBE_FIRST_S = 0.5    # first probe this long after the outage began
PROBE_GROWTH = 1.5     # each failed probe waits this much longer...
PROBE_MAX_S = 2.0      # ...up to this (a recovery is noticed within about this long)
JITTER = 0.25
REMOTE_PROBE_HOLD_S = 10.0  # another process's probe keeps ours back at most this long


def threshold(enabled: int) -> int:
    """How many distinct keys must fail together to call it the provider's outage."""
    return 1 if enabled <= 1 else max(2, enabled // 2 + 1)


@dataclass(slots=True)
class ProviderState:
    failed: dict[str, float] = field(default_factory=dict)  # key name -> last server failure
    down: bool = False
    since: float = 0.0          # monotonic start of the outage
    since_wall: float = 0.0
    next_probe: float = 0.0     # monotonic: the first request after this is the probe
    interval: float = PROBE_FIRST_S
    probe: object | None = None  # the attempt (lease) probing now, if any
    probe_since: float = 0.0
    probes: int = 0
    failures: int = 0           # server failures attributed to the outage
    remote_until: float = 0.0   # monotonic: another process's probe is out until then
    adopted: bool = False       # another process declared it (not pushed back on resync)


class Outages:
    """Outage state per provider (a provider name is enough: state is small)."""

    def __init__(self, clock: Clock, rng: random.Random | None = None):
        self.clock = clock
        self.rng = rng or random.Random()
        self.state: dict[str, ProviderState] = {}
        self.down: set[str] = set()  # providers in outage: the pick's one cheap check
        # A probe never settled (a bug that lost its attempt) must not keep a provider down
        # for good: past this, the next request probes. Pool sets it from routing.timeout_s.
        self.probe_timeout_s = 120.0
        # (provider, state or None: ended) on every change, for other processes; never
        # called for a change adopted from them
        self.notify = lambda provider, st: None

    # -- evidence ------------------------------------------------------------------------

    def success(self, provider: str) -> ProviderState | None:
        """The provider answered properly: forget failures; the ended outage, if one was on."""
        st = self.state.get(provider)
        if st is None:
            return None
        if not st.down:
            st.failed.clear()
            return None
        del self.state[provider]
        self.down.discard(provider)
        self.notify(provider, None)
        return st

    def failure(self, provider: str, key: str, enabled: int, attempt: object) -> str:
        """A server-class failure of ``key``: "key" (the key's own: cool it), "outage"
        (attributed to a running outage) or "start" (this failure starts one)."""
        now = self.clock.monotonic()
        st = self.state.get(provider)
        if st is None:
            st = self.state[provider] = ProviderState()
        if st.down:
            st.failures += 1
            if attempt is st.probe:  # the probe failed: wait a little longer for the next
                st.probe = None
                st.interval = min(st.interval * PROBE_GROWTH, PROBE_MAX_S)
                st.next_probe = now + self._jitter(st.interval)
                self.notify(provider, st)
            return "outage"
        st.failed = {k: t for k, t in st.failed.items() if now - t <= WINDOW_S}
        st.failed[key] = now
        if len(st.failed) < threshold(enabled):
            return "key"
        st.down, st.since, st.since_wall = True, now, self.clock.wall()
        st.failures = len(st.failed)
        st.interval = PROBE_FIRST_S
        st.next_probe = now + self._jitter(st.interval)
        self.down.add(provider)
        self.notify(provider, st)
        return "start"

    def settled(self, provider: str, attempt: object) -> None:
        """An attempt ended (whatever its outcome): a probe frees the probe slot. A probe
        that proved nothing (429, 401, client gone) is followed by the next one at once."""
        st = self.state.get(provider)
        if st is not None and st.probe is not None and attempt is st.probe:
            st.probe = None
            self.notify(provider, st)  # the others may probe now

    # -- gate ----------------------------------------------------------------------------

    def wait(self, provider: str) -> float:
        """0.0 if a request for ``provider`` may go (it is the probe if the provider is
        down: call ``probing`` once it has a key), else seconds until the next probe."""
        if provider not in self.down:
            return 0.0
        st = self.state[provider]
        now = self.clock.monotonic()
        if st.probe is not None and now - st.probe_since > self.probe_timeout_s:
            st.probe = None  # lost
        if st.probe is not None or st.remote_until > now:  # its answer decides; if it
            return st.interval                               # fails, the next is this far
        return max(st.next_probe - now, 0.0)

    def probing(self, provider: str, attempt: object) -> bool:
        """Mark ``attempt`` as the provider's probe if it is down; True if so."""
        st = self.state.get(provider)
        if st is None or not st.down:
            return False
        st.probe, st.probe_since = attempt, self.clock.monotonic()
        st.probes += 1
        self.notify(provider, st)
        return True

    def adopt(self, provider: str, since_ago: float, next_in: float, interval: float,
              probing: bool) -> bool:
        """Another process's outage of ``provider`` (times relative to now); True when it
        starts one here. Its probe, if out, holds ours back until its verdict arrives."""
        now = self.clock.monotonic()
        st = self.state.get(provider)
        started = st is None or not st.down
        if started:
            st = self.state[provider] = ProviderState(down=True, since=now - since_ago,
                                                      since_wall=self.clock.wall() - since_ago,
                                                      adopted=True)
            self.down.add(provider)
        st.interval = interval
        # a little after the other's time: its probe's announcement arrives first
        st.next_probe = now + next_in + self.rng.uniform(0.05, 0.25) * interval
        st.remote_until = now + min(REMOTE_PROBE_HOLD_S, self.probe_timeout_s) if probing else 0.0
        return started

    def adopt_end(self, provider: str) -> ProviderState | None:
        """Another process saw ``provider`` answer: its outage is over here too."""
        st = self.state.get(provider)
        if st is None or not st.down:
            return None
        del self.state[provider]
        self.down.discard(provider)
        return st

    def forget(self, provider: str | None = None, tell: bool = True) -> None:
        """End an outage (or all) without evidence: an operator's reset (``tell``: every
        process), a removed provider (this process's config only)."""
        for name in [provider] if provider is not None else list(self.state):
            self.state.pop(name, None)
            if name in self.down:
                self.down.discard(name)
                if tell:
                    self.notify(name, None)

    def snapshot(self) -> dict[str, dict]:
        """Per provider in outage: since (Unix time), for how long, when the next probe."""
        now = self.clock.monotonic()
        out = {}
        for name in sorted(self.down):
            st = self.state[name]
            out[name] = {"state": "outage", "since": round(st.since_wall, 3),
                         "for_s": round(now - st.since, 3),
                         "next_probe_in": round(max(0.0, st.next_probe - now), 3),
                         "probing": st.probe is not None or st.remote_until > now,
                         "probes": st.probes,
                         "failures": st.failures}
        return out

    def _jitter(self, seconds: float) -> float:
        return seconds * self.rng.uniform(1 - JITTER, 1 + JITTER)
