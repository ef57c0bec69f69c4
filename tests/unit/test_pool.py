import random
from collections import Counter

import pytest

from keypool.clock import FakeClock
from keypool.pool import NoKeyAvailable, Pool

from .helpers import config, key

STRATS = ("round_robin", "weighted", "least_used", "least_busy", "random")


def make(keys, strategy="round_robin", seed=1):
    clock = FakeClock()
    return Pool(config(keys=keys, strategy=strategy), clock, random.Random(seed)), clock


def picks(pool, n, model=None, provider="openai", release=True):
    out = []
    for _ in range(n):
        lease = pool.pick(provider, model)
        out.append(lease.key.name)
        if release:
            pool.release(lease, outcome="ok", latency=0.01)
    return out


def cool(pool, name, seconds, scope="", outcome="rate_limited"):
    pool.cool_down(pool.by_name[name], scope, seconds, outcome)


def test_round_robin_is_smooth_and_weighted():
    pool, _ = make([key("a", weight=1), key("b", weight=2), key("c", weight=1)])
    seq = picks(pool, 8)
    assert Counter(seq) == {"a": 2, "b": 4, "c": 2}
    # smooth: within a cycle of 4 the heavy key's two turns are not back to back
    assert seq[:4] == ["b", "a", "c", "b"]


@pytest.mark.parametrize("strategy", ["round_robin", "weighted"])
def test_weights_honoured_over_many_picks(strategy):
    pool, _ = make([key("a", weight=1), key("b", weight=3)], strategy)
    c = Counter(picks(pool, 4000))
    assert 0.70 < c["b"] / 4000 < 0.80


def test_random_is_roughly_uniform():
    pool, _ = make([key("a"), key("b"), key("c", weight=5)], "random")
    c = Counter(picks(pool, 3000))
    assert all(800 < c[n] < 1200 for n in "abc")


def test_least_used_evens_out_request_counts():
    pool, _ = make([key("a"), key("b"), key("c")], "least_used")
    pool.by_name["a"].requests = 10
    assert Counter(picks(pool, 20)) == {"b": 10, "c": 10}
    assert Counter(picks(pool, 3)) == {"a": 1, "b": 1, "c": 1}


def test_least_busy_picks_fewest_in_flight():
    pool, _ = make([key("a"), key("b"), key("c")], "least_busy")
    pool.leases = [pool.pick("openai", None) for _ in range(3)]
    held = [lease.key.name for lease in pool.leases]
    assert sorted(held) == ["a", "b", "c"]
    assert all(k.in_flight == 1 for k in pool.by_name.values())
    pool.release(held_leases(pool, "b"), outcome="ok", latency=0.1)
    assert pool.pick("openai", None).key.name == "b"


@pytest.mark.parametrize("strategy", STRATS)
def test_only_eligible_keys_are_picked(strategy):
    pool, clock = make([
        key("off", enabled=False),
        key("other", "anthropic"),
        key("mini", models=("gpt-4o-mini",)),
        key("cool"),
        key("any"),
    ], strategy)
    cool(pool, "cool", 10)
    names = set(picks(pool, 200, model="gpt-4o"))
    assert names == {"any"}
    names = set(picks(pool, 200, model="gpt-4o-mini"))
    assert "mini" in names and names <= {"any", "mini"}


def test_exclude_skips_named_keys():
    pool, _ = make([key("a"), key("b")])
    assert {pool.pick("openai", None, exclude=frozenset({"a"})).key.name for _ in range(5)} == {"b"}


def test_no_key_for_model_is_not_retryable():
    pool, _ = make([key("mini", models=("gpt-4o-mini",))])
    with pytest.raises(NoKeyAvailable) as e:
        pool.pick("openai", "gpt-4o")
    assert e.value.retry_after is None


def test_all_cooling_reports_soonest_recovery():
    pool, clock = make([key("a"), key("b")])
    cool(pool, "a", 30)
    cool(pool, "b", 7)
    with pytest.raises(NoKeyAvailable) as e:
        pool.pick("openai", None)
    assert e.value.retry_after == pytest.approx(7)
    clock.advance(7.01)
    assert pool.pick("openai", None).key.name == "b"


def test_acquire_and_release_accounting():
    pool, _ = make([key("a")])
    lease = pool.pick("openai", None)
    assert (lease.key.in_flight, lease.key.requests) == (1, 1)
    pool.release(lease, outcome="server", latency=0.5, tokens_in=3, tokens_out=4)
    snap = pool.snapshot()[0]
    assert snap["in_flight"] == 0 and snap["failures"] == 1 and snap["tokens_out"] == 4
    assert snap["failures_by_class"] == {"server": 1}
    assert snap["avg_latency_s"] == 0.5 and snap["key"] == "sk-…0000"
    assert "secret" not in repr(snap)


def test_update_keeps_state_for_same_name_and_secret():
    pool, _ = make([key("a"), key("b")])
    a = pool.pick("openai", None).key
    pool.update(config(keys=[key("a", weight=5), key("b", secret="sk-new-secret-1111"), key("c")]))
    assert pool.by_name["a"] is a and a.spec.weight == 5 and a.in_flight == 1
    assert pool.by_name["b"].requests == 0  # a new secret starts fresh
    assert "c" in pool.by_name


def test_removed_key_takes_no_new_requests_but_finishes():
    pool, _ = make([key("a"), key("b")])
    held = [pool.pick("openai", None) for _ in range(2)]
    pool.update(config(keys=[key("b")]))
    gone = next(lease for lease in held if lease.key.name == "a")
    assert gone.key.retired
    assert {pool.pick("openai", None).key.name for _ in range(4)} == {"b"}
    pool.release(gone, outcome="ok", latency=0.1)
    assert gone.key.in_flight == 0


def held_leases(pool, name):
    return next(lease for lease in pool.leases if lease.key.name == name)


def test_selection_is_linear_in_provider_keys_only():
    # 2000 keys of another provider must not slow openai picks: only its own list is scanned.
    keys = [key(f"x{i}", "groq") for i in range(2000)] + [key("a"), key("b")]
    pool, _ = make(keys)
    assert len(pool.by_provider["openai"]) == 2


def test_a_model_cooldown_leaves_the_key_ok_and_listed():
    pool, _ = make([key("a"), key("b")])
    cool(pool, "a", 30, scope="gpt-4o")
    a = {k["name"]: k for k in pool.snapshot()}["a"]
    assert a["state"] == "ok" and a["cooling_models"] == {"gpt-4o": 30}  # usable for others
    cool(pool, "a", 10)
    assert {k["name"]: k for k in pool.snapshot()}["a"]["state"] == "cooling"


def test_a_rename_carries_the_keys_state():
    pool, _ = make([key("a", secret="sk-a"), key("b", secret="sk-b")])
    picks(pool, 4)
    cool(pool, "a", 30, scope="gpt-4o")
    before = pool.by_name["a"].requests
    pool.update(config(keys=[key("renamed", secret="sk-a"), key("b", secret="sk-b")]))
    snap = {k["name"]: k for k in pool.snapshot()}
    assert snap["renamed"]["requests"] == before == 2 and snap["renamed"]["cooling_models"]
    assert not pool.by_name["renamed"].retired
    assert [r["key"] for r in pool.export_state()] == ["renamed", "b"]
    # a secret shared by two new names carries to neither
    pool.update(config(keys=[key("x", secret="sk-a"), key("y", secret="sk-a"), key("b", secret="sk-b")]))
    assert pool.by_name["x"].requests == pool.by_name["y"].requests == 0
