"""Provider outages: the detector (fake clock), the pool's part, the gateway's answers."""
import asyncio
import json
import random

import pytest

from keypool import outage
from keypool.clock import FakeClock
from keypool.config import Config, Cooldown, Routing
from keypool.gateway import Gateway
from keypool.outage import Outages, threshold
from keypool.pool import Pool, ProviderOutage
from keypool.providers import PRESETS
from keypool.reissue import UpstreamError, serve

from .helpers import key

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
CD = Cooldown(rate_limited_s=30, server_error_s=5, max_s=40, auth_error_s=3600)


# -- the detector --------------------------------------------------------------------------

def detector():
    clock = FakeClock()
    return Outages(clock, random.Random(3)), clock


@pytest.mark.parametrize("enabled, need", [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (10, 6)])
def test_threshold_is_a_strict_majority_of_at_least_two(enabled, need):
    assert threshold(enabled) == need


def test_most_keys_failing_together_start_an_outage():
    o, clock = detector()
    assert o.failure("p", "k1", 4, object()) == "key"
    assert o.failure("p", "k1", 4, object()) == "key"  # the same key again counts once
    clock.advance(3)
    assert o.failure("p", "k2", 4, object()) == "key"
    assert "p" not in o.down
    assert o.failure("p", "k3", 4, object()) == "start"
    assert o.down == {"p"} and o.failure("p", "k4", 4, object()) == "outage"


def test_a_success_in_between_or_a_long_gap_is_no_outage():
    o, clock = detector()
    o.failure("p", "k1", 3, object())
    assert o.success("p") is None  # a sibling succeeded: k1 failed alone
    assert o.failure("p", "k2", 3, object()) == "key"
    clock.advance(outage.WINDOW_S + 0.1)  # too far apart to be one event
    assert o.failure("p", "k3", 3, object()) == "key"
    assert not o.down


def test_single_key_provider_is_down_on_its_one_key():
    o, _ = detector()
    assert o.failure("solo", "s1", 1, object()) == "start"


def test_one_probe_at_a_time_on_a_growing_jittered_cadence():
    o, clock = detector()
    for k in ("k1", "k2"):
        o.failure("p", k, 2, object())
    first = o.wait("p")
    assert 0.5 * 0.75 <= first <= 0.5 * 1.25  # nobody goes before the first probe
    clock.advance(first)
    assert o.wait("p") == 0.0
    gaps = []
    for _ in range(8):
        probe = object()
        assert o.probing("p", probe)
        assert o.wait("p") > 0  # one probe at a time: the others wait
        clock.advance(0.05)
        assert o.failure("p", "k1", 2, probe) == "outage"
        o.settled("p", probe)
        gap = o.wait("p")
        gaps.append(gap)
        clock.advance(gap)
    assert gaps[0] == pytest.approx(0.75, rel=0.26)
    assert all(g <= outage.PROBE_MAX_S * 1.25 for g in gaps)
    assert gaps[-1] >= outage.PROBE_MAX_S * 0.75  # grew to the cap
    snap = o.snapshot()["p"]
    assert snap["state"] == "outage" and snap["probes"] == 8 and snap["failures"] == 10


def test_a_probe_that_proves_nothing_lets_the_next_go_at_once():
    o, clock = detector()
    o.failure("p", "k1", 1, object())
    clock.advance(1)
    probe = object()
    o.probing("p", probe)
    o.settled("p", probe)  # answered 429, or the client left
    assert o.wait("p") == 0.0


def test_a_lost_probe_does_not_keep_the_provider_down():
    o, clock = detector()
    o.probe_timeout_s = 10
    o.failure("p", "k1", 1, object())
    clock.advance(1)
    o.probing("p", object())  # never settled: a bug lost it
    clock.advance(5)
    assert o.wait("p") > 0
    clock.advance(6)
    assert o.wait("p") == 0.0


def test_success_ends_the_outage_at_once():
    o, clock = detector()
    o.failure("p", "k1", 1, object())
    clock.advance(4)
    ended = o.success("p")
    assert ended is not None and ended.since == 1000.0
    assert not o.down and o.wait("p") == 0.0 and o.snapshot() == {}


# -- the pool ------------------------------------------------------------------------------

def pool(n=4, **cd):
    clock = FakeClock()
    cfg = Config(providers=dict(PRESETS), keys=tuple(key(f"k{i}") for i in range(1, n + 1)),
                 routing=Routing(cooldown=Cooldown(**{**CD.__dict__, **cd})))
    return Pool(cfg, clock, random.Random(1)), clock


def fail(p, lease, outcome="server", seconds=5.0):
    """What Gateway.judge does with a failed attempt."""
    if p.observe(lease, outcome):
        p.cool_down(lease.key, "", seconds, outcome)
    p.release(lease, outcome=outcome, latency=0.1)


def test_outage_forgives_cooldowns_and_cools_no_key():
    p, clock = pool()
    for _ in range(3):
        fail(p, p.pick("openai", "gpt-4o-mini"))
    assert p.providers()["openai"]["state"] == "outage"
    assert all(k["state"] == "ok" and k["cooldown_s"] == 0 for k in p.snapshot())
    assert all(k.failures_in_row == 0 for k in p.by_name.values())
    with pytest.raises(ProviderOutage) as e:
        p.pick("openai", "gpt-4o-mini")
    assert 0 < e.value.retry_after <= 0.625
    clock.advance(e.value.retry_after)
    probe = p.pick("openai", "gpt-4o-mini")
    assert probe.provider_probe
    with pytest.raises(ProviderOutage):
        p.pick("openai", "gpt-4o-mini")
    fail(p, probe)
    assert all(k["state"] == "ok" for k in p.snapshot())  # still nobody cooled
    clock.advance(3)
    probe = p.pick("openai", "gpt-4o-mini")
    assert p.observe(probe, "ok")
    p.release(probe, outcome="ok", latency=0.1)
    assert p.providers() == {"openai": {"state": "ok"}}
    assert len({p.pick("openai", "gpt-4o-mini").key.name for _ in range(4)}) == 4  # all serve


def test_a_lone_failing_key_is_cooled_and_4xx_is_never_evidence():
    p, _ = pool(n=6)
    fail(p, p.pick("openai", "gpt-4o-mini"))
    ok = p.pick("openai", "gpt-4o-mini")
    p.observe(ok, "ok")
    p.release(ok, outcome="ok", latency=0.1)
    fail(p, p.pick("openai", "gpt-4o-mini"))
    assert not p.outages.down
    assert sum(k["state"] == "cooling" for k in p.snapshot()) == 2
    for outcome in ("rate_limited", "auth", "quota"):
        fail(p, p.pick("openai", "gpt-4o-mini"), outcome)
    assert not p.outages.down


def test_reset_of_a_key_ends_its_providers_outage():
    p, _ = pool(n=2)
    for _ in range(2):
        fail(p, p.pick("openai", "gpt-4o-mini"))
    assert p.outages.down
    assert p.reset_cooldown("k1") and not p.outages.down
    p.pick("openai", "gpt-4o-mini")


def test_every_cooldown_is_capped_at_max_s_but_a_dead_keys():
    p, _ = pool(max_s=40)
    for name, outcome in (("k1", "server"), ("k2", "rate_limited")):
        p.cool_down(p.by_name[name], "", 86_400, outcome)
    p.cool_down(p.by_name["k3"], "gpt-4o", 1e12, "rate_limited")
    p.cool_down(p.by_name["k4"], "", 3600, "auth")
    snap = {k["name"]: k["cooldown_s"] for k in p.snapshot()}
    assert snap == {"k1": 40, "k2": 40, "k3": 40, "k4": 3600}


def test_restored_cooldowns_are_capped_too():
    p, clock = pool(max_s=40)
    wall = clock.wall()
    rows = [{"key": k, "fingerprint": __import__("keypool.pool").pool.fingerprint(
                 p.by_name[k].spec.secret), "cooldown_until": wall + 86_400,
             "cooldown_reason": reason, "model_cooldowns": {"gpt-4o": wall + 86_400}}
            for k, reason in (("k1", "rate_limited"), ("k2", "auth"))]
    assert p.restore_state(rows) == 2
    snap = {k["name"]: k for k in p.snapshot()}
    assert snap["k1"]["cooldown_s"] == 40 and snap["k1"]["cooling_models"] == {"gpt-4o": 40}
    assert snap["k2"]["cooldown_s"] == 86_400  # a dead key stays dead for what it was told


# -- the gateway: answers, stats, health, metrics, an outage end to end on a fake clock ------

def gateway(n=4, max_attempts=4):
    clock = FakeClock()
    cfg = Config(providers=dict(PRESETS), keys=tuple(key(f"k{i}") for i in range(1, n + 1)),
                 routing=Routing(max_attempts=max_attempts, queue_s=5, cooldown=CD))
    return Gateway(cfg, clock, random.Random(0)), clock


class Reply:
    def __init__(self, status):
        self.status, self.reason, self.headers = status, "", {}

    async def read(self):
        return b"{}"

    def close(self):
        pass


class Upstream:
    """Every key fails (503, or a reset) until ``down_until`` on the gateway's clock."""

    def __init__(self, clock, down_until, reset=False):
        self.clock, self.down_until, self.reset = clock, down_until, reset
        self.calls = []

    async def __call__(self, plan):
        self.clock.advance(0.01)
        self.calls.append(self.clock.monotonic())
        if self.clock.monotonic() < self.down_until:
            if self.reset:
                raise UpstreamError("connection reset")
            return Reply(503)
        return Reply(200)


def ask(gw, send, path="/v1/chat/completions"):
    ticket = gw.admit("POST", path, {"content-type": "application/json"}, BODY)

    async def sleeper(s):
        gw.clock.advance(s)

    out = asyncio.run(serve(gw, ticket, send, sleep=sleeper))
    if out.plan is not None:
        gw.finish(out.plan, out.reply.status)
    return out.answer.status if out.answer else out.reply.status, out


@pytest.mark.parametrize("reset", [False, True], ids=["503", "reset"])
def test_an_outage_end_to_end_on_a_fake_clock(reset):
    gw, clock = gateway()
    start = clock.monotonic()
    up = Upstream(clock, start + 20, reset)
    results = []  # (time, status): a client every 50 ms, honouring nothing
    while clock.monotonic() < start + 26:
        results.append((clock.monotonic(), ask(gw, up)[0]))
        clock.advance(0.05)
    during = [s for t, s in results if t < start + 20]
    after = [s for t, s in results if start + 20 <= t]
    assert set(during) <= {502, 503} and during.count(503) > len(during) * 0.9
    outage_calls = [t for t in up.calls if t < start + 20]
    # a trickle: the first request's attempts, then about one probe per 0.5-2.5 s
    assert len(outage_calls) <= 3 + 20 / 0.375
    assert len([t for t in outage_calls if t > start + 5]) <= 15 / (2.0 * 0.75) + 1
    recovered = next(t for t, s in results if s == 200)
    assert recovered - (start + 20) <= outage.PROBE_MAX_S * 1.25 + 0.1
    assert all(s == 200 for t, s in results if t > recovered)
    assert all(k["state"] == "ok" and k["failures_by_class"].get("server", 0) >= 0
               for k in gw.pool.snapshot())
    assert len(after) > 100


def test_outage_answer_is_a_fast_503_with_retry_after_in_both_shapes():
    gw, clock = gateway(n=2)
    up = Upstream(clock, clock.monotonic() + 60)
    status, out = ask(gw, up)
    assert status == 503 and len(up.calls) == 2
    status, out = ask(gw, up)  # refused without touching the upstream
    assert status == 503 and len(up.calls) == 2
    body = json.loads(out.answer.body)
    assert body["error"]["code"] == "provider_outage" and body["error"]["type"] == "api_error"
    assert out.answer.headers["retry-after"] == "1"


def test_outage_answer_on_anthropic_paths_has_anthropics_shape():
    clock = FakeClock()
    cfg = Config(providers=dict(PRESETS), routing=Routing(cooldown=CD),
                 keys=tuple(key(f"a{i}", provider="anthropic") for i in (1, 2)))
    gw = Gateway(cfg, clock, random.Random(0))
    up = Upstream(clock, clock.monotonic() + 60)
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 5,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    for expected_calls in (2, 2):
        ticket = gw.admit("POST", "/v1/messages", {"content-type": "application/json"}, body)
        out = asyncio.run(serve(gw, ticket, up))
        assert out.answer.status == 503 and len(up.calls) == expected_calls
    doc = json.loads(out.answer.body)
    assert doc["type"] == "error" and doc["error"]["code"] == "provider_outage"


def test_outage_shows_in_stats_health_and_metrics():
    gw, clock = gateway(n=2)
    ask(gw, Upstream(clock, clock.monotonic() + 60))
    stats = json.loads(gw.handle("GET", "/_keymux/stats", {}, None).body)
    p = stats["providers"]["openai"]
    assert p["state"] == "outage" and p["since"] > 1e9 and 0 < p["next_probe_in"] <= 0.625
    health = json.loads(gw.handle("GET", "/_keymux/health", {}, None).body)
    assert health["providers"]["openai"]["state"] == "outage"
    metrics = gw.handle("GET", "/metrics", {}, None).body.decode()
    assert 'keymux_provider_outage{provider="openai"} 1.0' in metrics
    clock.advance(1)
    ask(gw, Upstream(clock, 0))  # the probe succeeds
    metrics = gw.handle("GET", "/metrics", {}, None).body.decode()
    assert 'keymux_provider_outage{provider="openai"} 0.0' in metrics
    health = json.loads(gw.handle("GET", "/_keymux/health", {}, None).body)
    assert health["providers"]["openai"] == {"state": "ok"}


def test_outage_logs_once_when_it_starts_and_once_when_it_ends(caplog):
    gw, clock = gateway(n=2)
    up = Upstream(clock, clock.monotonic() + 5)
    with caplog.at_level("WARNING", logger="keymux"):
        while clock.monotonic() < 1000 + 7:
            ask(gw, up)
            clock.advance(0.05)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("is down" in m for m in lines) == 1
    assert sum("is back" in m for m in lines) == 1
    assert not any("sk-" in m for m in lines)


def test_client_retry_after_is_capped_at_max_s():
    gw, clock = gateway(n=1)
    gw.pool.by_name["k1"].limits.learn(clock.monotonic(), 0, 86_400.0, None, None)
    status, out = ask(gw, Upstream(clock, 0))
    assert status == 429 and int(out.answer.headers["retry-after"]) <= 40


class BrokenBody(Reply):
    """An answer whose body breaks off, or is over the cap, after its status line."""

    async def read(self):
        raise UpstreamError("answer over 1 MB")


def test_a_broken_body_after_a_200_is_the_keys_fault_not_an_outage():
    gw, clock = gateway(n=2)

    async def send(plan):
        return BrokenBody(200)

    status, out = ask(gw, send)
    assert status == 502 and not gw.pool.outages.down
    assert all(k["state"] == "cooling" for k in gw.pool.snapshot())

    async def send_503(plan):  # a 5xx whose body breaks off is still the provider's
        return BrokenBody(503)

    for name in ("k1", "k2"):
        gw.pool.reset_cooldown(name)
    assert ask(gw, send_503)[0] == 503 and gw.pool.outages.down
