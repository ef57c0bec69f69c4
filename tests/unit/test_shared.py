"""The seam keypool.shared: the attempt loop asks for a shared slot, a refused one gives the
key back untouched and holds it; events from another process apply to this pool."""
import json
import random

import pytest

from keypool.clock import FakeClock
from keypool.outage import PROBE_FIRST_S, REMOTE_PROBE_HOLD_S
from keypool.pool import Pool, ProviderOutage
from keypool.poolstate import fingerprint
from keypool.shared import LOCAL, Event, LocalState, Slot, apply, decode, local_events
from keypool.shared_health import (MAX_NEXT_S, LearnEvent, OutageEvent, learn_event,
                                   live_outages, outage_event)
from keypool.strategies import stagger

from .helpers import config, key
from .test_reissue import FakeUpstream, make, run


class FakeShared(LocalState):
    """Refuses the slots of the keys in ``full`` (for ``wait`` s), grants the others."""

    def __init__(self, full=(), wait=5.0):
        self.full, self.wait = set(full), wait
        self.asked, self.released = [], []

    def needs_slot(self, key, ask=None):
        return True

    async def reserve(self, key, est_tokens=0, ask=None):
        self.asked.append(key.name)
        if key.name in self.full:
            return None, self.wait
        return Slot(key.name, f"t{len(self.asked)}"), 0.0

    def release(self, slot, tokens=None):
        self.released.append(slot.key)


def test_a_refused_slot_moves_the_request_to_another_key():
    gw, clock = make(n=2)
    gw.pool.shared = FakeShared(full={"k1"})
    out, _ = run(gw, FakeUpstream(clock))
    assert out.plan.key.name == "k2" and gw.pool.shared.asked == ["k1", "k2"]
    k1 = gw.pool.by_name["k1"]
    assert (k1.in_flight, k1.requests) == (0, 0)  # given back as if never leased
    assert k1.blocked_until(None, clock.monotonic()) == clock.monotonic() + 5.0
    assert gw.pool.shared.released == ["k2"]  # the winning attempt's slot, at finish


def test_every_key_full_across_processes_answers_429_with_the_wait():
    gw, clock = make(n=1)
    gw.pool.shared = FakeShared(full={"k1"}, wait=7.0)
    out, _ = run(gw, FakeUpstream(clock))
    assert out.answer.status == 429
    assert gw.pool.by_name["k1"].requests == 0


def test_a_queued_request_takes_the_slot_once_it_frees():
    gw, clock = make(n=1, queue_s=10)
    shared = gw.pool.shared = FakeShared(full={"k1"}, wait=2.0)
    up = FakeUpstream(clock)

    orig = shared.reserve

    async def frees_later(k, *rest):
        if clock.monotonic() >= 1_002.0:
            shared.full.clear()
        return await orig(k, *rest)
    shared.reserve = frees_later
    out, ticket = run(gw, up)
    assert out.plan.key.name == "k1" and ticket.queued == pytest.approx(2.0)
    assert up.calls == ["k1"]


def test_events_apply_to_a_key_with_the_same_secret_only():
    clock = FakeClock()
    pool = Pool(config(keys=[key("a"), key("b")]), clock)
    other = Pool(config(keys=[key("a"), key("b")]), clock)
    other.cool_down(other.by_name["a"], "gpt-4o", 20, "rate_limited")
    other.cool_down(other.by_name["b"], "", 3600, "auth")
    for ev in local_events(other):
        assert apply(pool, ev)
    a, b = pool.by_name["a"], pool.by_name["b"]
    assert a.cool["gpt-4o"] == pytest.approx(clock.monotonic() + 20) and "gpt-4o" in a.needs_probe
    assert b.state(clock.monotonic()) == "dead"  # a dead mark keeps its length past max_s
    assert apply(pool, Event("clear", "b", ev.fp, ("",)))
    assert b.state(clock.monotonic()) == "ok" and not b.needs_probe
    assert not apply(pool, Event("cool", "a", "0" * 16, ("",), clock.wall() + 9, "server"))
    assert not apply(pool, Event("cool", "gone", ev.fp, ("",), clock.wall() + 9, "server"))
    fp_a = fingerprint(a.spec.secret)
    assert not apply(pool, Event.from_dict(  # already over
        {"kind": "cool", "key": "a", "fp": fp_a, "scopes": [""], "end": clock.wall() - 1}))
    assert apply(pool, Event("cool", "a", fp_a, ("",), clock.wall() + 9999, "server"))
    assert a.cool[""] == pytest.approx(clock.monotonic() + pool.max_cool)  # capped at max_s


def test_a_shorter_remote_cooldown_does_not_shorten_a_dead_mark():
    clock = FakeClock()
    pool = Pool(config(keys=[key("a")]), clock)
    pool.cool_down(pool.by_name["a"], "", 3600, "auth")
    fp = fingerprint(pool.by_name["a"].spec.secret)
    apply(pool, Event("cool", "a", fp, ("",), clock.wall() + 30, "rate_limited"))
    a = pool.by_name["a"]
    assert a.reason[""] == "auth" and a.state(clock.monotonic()) == "dead"


# -- provider outages, learned budgets, the round robin across processes ---------------------

class Recorder(LocalState):
    """Collects what the pool tells the backend, as a Redis backend would publish it."""

    def __init__(self, pool):
        self.pool, self.events, self.learned_keys = pool, [], []

    def outage(self, provider, st):
        self.events.append(outage_event(self.pool, provider, st))

    def learned(self, key):
        self.learned_keys.append(key)


def two_pools(n=4):
    """Two processes' pools on one (fake) clock; ``a`` records what it would publish."""
    clock = FakeClock()
    keys = [key(f"k{i}") for i in range(1, n + 1)]
    a = Pool(config(keys=keys), clock, random.Random(1))
    b = Pool(config(keys=keys), clock, random.Random(2))
    a.shared = Recorder(a)
    return a, b, clock


def server_failures(p, n):
    for _ in range(n):
        lease = p.pick("openai", "gpt-4o-mini")
        if p.observe(lease, "server"):
            p.cool_down(lease.key, "", 5, "server")
        p.release(lease, outcome="server", latency=0.1)


def relay(a, b):
    """Deliver what ``a`` published since the last call to ``b``, through the wire format."""
    out = [apply(b, decode(json.loads(json.dumps(ev.to_dict())))) for ev in a.shared.events]
    a.shared.events.clear()
    return out


def test_an_outage_in_one_process_is_adopted_with_its_probe_schedule():
    a, b, clock = two_pools()
    b.cool_down(b.by_name["k4"], "", 5, "server")  # b's own share of the same failures
    server_failures(a, 3)
    assert [e.kind for e in a.shared.events] == ["outage"] and relay(a, b) == [True]
    assert b.providers()["openai"]["state"] == "outage"
    assert b.by_name["k4"].state(clock.monotonic()) == "ok"  # forgiven, as in a
    # on reconnecting, a pushes its outage back; b, which only adopted it, leaves it to Redis
    assert [e.provider for e in live_outages(a)] == ["openai"] and live_outages(b) == []
    with pytest.raises(ProviderOutage) as e:
        b.pick("openai", "gpt-4o-mini")
    # b's next probe comes a little after a's: a's probe's announcement arrives first
    assert a.outages.state["openai"].next_probe < b.outages.state["openai"].next_probe
    assert 0 < e.value.retry_after <= MAX_NEXT_S + 0.25 * PROBE_FIRST_S
    clock.advance(e.value.retry_after)
    probe = a.pick("openai", "gpt-4o-mini")
    assert probe.provider_probe and relay(a, b) == [True]
    clock.advance(3)  # past b's own schedule: a's probe is still out, b holds its own
    with pytest.raises(ProviderOutage):
        b.pick("openai", "gpt-4o-mini")
    assert b.providers()["openai"]["probing"]
    a.observe(probe, "server")  # the probe failed: the next is due later, in both
    a.release(probe, outcome="server", latency=0.1)
    assert relay(a, b) == [True]
    wait = b.outages.wait("openai")
    assert 0 < wait <= 2.5 and not b.providers()["openai"]["probing"]
    clock.advance(wait)
    probe_b = b.pick("openai", "gpt-4o-mini")  # b may probe now (a has no traffic)
    assert probe_b.provider_probe
    clock.advance(1)
    probe = a.pick("openai", "gpt-4o-mini")
    assert a.observe(probe, "ok") and [e.kind for e in a.shared.events] == ["outage", "up"]
    relay(a, b)
    assert b.providers()["openai"] == {"state": "ok"}
    b.observe(probe_b, "ok")  # b's own probe answering late changes nothing
    b.release(probe_b, outcome="ok", latency=0.1)
    assert b.providers()["openai"] == {"state": "ok"}


def test_a_remote_probe_that_never_answers_holds_the_others_only_so_long():
    a, b, clock = two_pools()
    server_failures(a, 3)
    clock.advance(3)
    a.pick("openai", "gpt-4o-mini")  # its process dies with it
    relay(a, b)
    assert b.outages.wait("openai") > 0
    clock.advance(REMOTE_PROBE_HOLD_S)
    assert b.outages.wait("openai") == 0 and b.pick("openai", "gpt-4o-mini").provider_probe


def test_an_operators_reset_ends_the_outage_everywhere_a_removed_provider_does_not():
    a, b, _ = two_pools()
    server_failures(a, 3)
    relay(a, b)
    a.reset_cooldown("k1")
    assert [e.kind for e in a.shared.events] == ["up"]
    relay(a, b)
    assert not b.outages.down
    server_failures(a, 3)
    a.shared.events.clear()
    a.update(config(keys=[key("x", provider="anthropic")]))  # openai gone from a's config
    assert not a.outages.down and a.shared.events == []


def test_outage_events_for_another_provider_or_malformed_are_ignored():
    a, b, clock = two_pools()
    server_failures(a, 3)
    ev = a.shared.events[0]
    wall = clock.wall()
    other_url = OutageEvent("outage", "openai", "0" * 16, wall, wall + 1)
    unknown = OutageEvent("outage", "nope", ev.fp, wall, wall + 1)
    assert not apply(b, other_url) and not apply(b, unknown) and not b.outages.down
    for bad in ({"kind": "outage"}, {"kind": "outage", "provider": "openai", "fp": ev.fp,
                                      "next": "Infinity"},
                {"kind": "outage", "provider": "openai", "fp": ev.fp, "since": [1]},
                {"kind": "weird", "key": "k1"}, {"kind": "learn", "key": "k1"},
                {"kind": "learn", "key": "k1", "fp": "x", "requests": "NaN"}):
        with pytest.raises((ValueError, KeyError, TypeError)):
            decode(json.loads(json.dumps(bad)))
    # a next probe far away (a skewed clock) parks the provider no longer than our cadence
    assert apply(b, OutageEvent("outage", "openai", ev.fp, wall, wall + 3600))
    assert b.outages.wait("openai") <= MAX_NEXT_S + 0.25 * 2.0


def test_a_learned_budget_is_adopted_and_the_adopter_subtracts_its_own_takes():
    a, b, clock = two_pools()
    ka, kb = a.by_name["k1"], b.by_name["k1"]
    ka.limits.learn(clock.monotonic(), 3, 20.0, 500, 30.0)
    ev = learn_event(a, ka)
    assert ev.requests == 3 and ev.requests_until == pytest.approx(clock.wall() + 20)
    assert apply(b, decode(json.loads(json.dumps(ev.to_dict()))))
    now = clock.monotonic()
    assert kb.limits.snapshot(now)["learned_requests_left"] == 3
    assert kb.limits.snapshot(now)["learned_tokens_left"] == 500
    for _ in range(3):
        kb.limits.reserve(now, 1)
    assert kb.limits.wait_for(now, 1) == pytest.approx(20.0)  # b holds k1 back until reset
    clock.advance(20)
    assert kb.limits.wait_for(clock.monotonic(), 1) == 0.0


def test_a_learned_budget_keeps_the_stricter_word_and_ignores_other_secrets():
    a, b, clock = two_pools()
    now, wall = clock.monotonic(), clock.wall()
    kb = b.by_name["k1"]
    kb.limits.learn(now, 1, 20.0, None, None)
    fp = fingerprint(kb.spec.secret)
    # an older word of the same window (more left) does not undo b's own
    assert not apply(b, LearnEvent("k1", fp, 50, wall + 20.5, None, 0.0))
    assert kb.limits.requests.current(now) == 1
    # a later window's does
    assert apply(b, LearnEvent("k1", fp, 50, wall + 60, None, 0.0))
    assert kb.limits.requests.current(now) == 50
    assert not apply(b, LearnEvent("k1", "0" * 16, 0, wall + 60, 0, wall + 60))
    assert not apply(b, LearnEvent("gone", fp, 0, wall + 60, 0, wall + 60))
    assert not apply(b, LearnEvent("k1", fp, 0, wall - 1, 0, wall - 1))  # already reset
    assert apply(b, LearnEvent("k2", fingerprint(b.by_name["k2"].spec.secret), 0,
                               wall + 1e9, None, 0.0))
    assert b.by_name["k2"].limits.wait_for(now, 1) == pytest.approx(b.max_cool)  # capped
    assert learn_event(b, b.by_name["k3"]) is None  # nothing learned: nothing to tell


def test_the_default_backend_is_told_nothing_and_costs_nothing():
    clock = FakeClock()
    pool = Pool(config(keys=[key("k1"), key("k2")]), clock)
    assert pool.shared is LOCAL
    server_failures(pool, 2)  # an outage in a lone process: the hooks are no-ops
    assert pool.outages.down and LOCAL.outage("openai", None) is None
    assert LOCAL.learned(pool.by_name["k1"]) is None


def fleet_picks(pools, rounds):
    """Requests arriving at the fleet in turn (a balancer's round robin over processes)."""
    picks = []
    for _ in range(rounds):
        for p in pools:
            lease = p.pick("openai", "gpt-4o-mini")
            p.release(lease, outcome="ok", latency=0.01)
            picks.append(lease.key.name)
    return picks


def collisions(picks, n_procs):
    """Requests of one round (arriving together, one per process) on a key already taken
    in that round: 0 is as good as one process picking them all."""
    return sum(n_procs - len(set(picks[i:i + n_procs])) for i in range(0, len(picks), n_procs))


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (3, 1, 1, 1), (2, 2, 1)])
def test_staggered_round_robin_spreads_two_processes_as_one(weights):
    def fleet(stagger_them):
        clock = FakeClock()
        keys = [key(f"k{i}", weight=w) for i, w in enumerate(weights)]
        pools = [Pool(config(keys=keys), clock) for _ in range(2)]
        if stagger_them:
            for i, p in enumerate(pools, 1):
                stagger(p, i, 2)
        return fleet_picks(pools, 200)
    one = fleet_picks([Pool(config(keys=[key(f"k{i}", weight=w) for i, w in
                                         enumerate(weights)]), FakeClock())], 400)
    staggered, plain = fleet(True), fleet(False)
    for picks in (one, staggered, plain):  # each key gets its weight's share, whatever
        share = {f"k{i}": picks.count(f"k{i}") / len(picks) for i in range(len(weights))}
        assert share == {f"k{i}": pytest.approx(w / sum(weights), abs=0.01) for i, w in enumerate(weights)}
    assert collisions(plain, 2) == 200  # unstaggered: both processes pick the same key
    # staggered: two requests arriving together never share a key when the weights are
    # equal (as one process picking both); with unequal ones no more often than two
    # independent random picks would (sum of the shares squared)
    if len(set(weights)) == 1:
        assert collisions(staggered, 2) == collisions(one, 2) == 0
    random_pairs = 200 * sum((w / sum(weights)) ** 2 for w in weights)
    assert collisions(staggered, 2) <= random_pairs
    print(f"weights {weights}: same-key pairs of 200: {collisions(plain, 2)} unstaggered, "
          f"{collisions(staggered, 2)} staggered, {collisions(one, 2)} one process, "
          f"{random_pairs:.0f} random")


def test_three_staggered_processes_and_a_lone_one():
    clock = FakeClock()
    keys = [key(f"k{i}") for i in range(6)]
    pools = [Pool(config(keys=keys), clock) for _ in range(3)]
    for i, p in enumerate(pools, 1):  # as `keymux run --workers 3` numbers them
        stagger(p, i, 3)
    assert collisions(fleet_picks(pools, 120), 3) == 0
    lone = Pool(config(keys=keys), clock)
    stagger(lone, 1, 1)  # one process: untouched
    assert all(k.rr_current == 0 for k in lone.by_name.values())
