"""The attempt loop with a fake upstream: which keys are tried, what the client gets."""
import asyncio
import json

import pytest

from keypool.clock import FakeClock
from keypool.config import Config, Cooldown, Routing
from keypool.gateway import Gateway
from keypool.providers import PRESETS
from keypool.reissue import UpstreamError, serve

from .helpers import key

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


class FakeReply:
    def __init__(self, status, headers=None, body=b"{}"):
        self.status, self.reason = status, ""
        self.headers = headers or {}
        self._body = body
        self.closed = False

    async def read(self):
        return self._body

    def close(self):
        self.closed = True


class FakeUpstream:
    """Answers per key name from a script: a list of replies/exceptions, then 200s."""

    def __init__(self, clock, script=None, delay=0.0):
        self.clock, self.script, self.delay = clock, script or {}, delay
        self.calls = []

    async def __call__(self, plan):
        self.calls.append(plan.key.name)
        if self.delay:
            self.clock.advance(self.delay)
        todo = self.script.get(plan.key.name, [])
        step = todo.pop(0) if todo else FakeReply(200, body=b'{"usage":{"prompt_tokens":1}}')
        if isinstance(step, Exception):
            raise step
        return step


def make(n=3, **routing):
    clock = FakeClock()
    routing = {"strategy": "round_robin", "max_attempts": 3, "timeout_s": 60, "queue_s": 0,
               "cooldown": Cooldown(rate_limited_s=30, server_error_s=5, max_s=40,
                                    auth_error_s=3600), **routing}
    cfg = Config(providers=dict(PRESETS), keys=tuple(key(f"k{i}") for i in range(1, n + 1)),
                 routing=Routing(**routing))
    import random
    return Gateway(cfg, clock, random.Random(0)), clock


def run(gw, send, **kw):
    ticket = gw.admit("POST", "/v1/chat/completions", {"content-type": "application/json"}, BODY)

    async def sleeper(s):
        gw.clock.advance(s)

    out = asyncio.run(serve(gw, ticket, send, sleep=sleeper, **kw))
    if out.plan is not None:  # what the glue does once the answer is delivered
        gw.finish(out.plan, out.reply.status)
    return out, ticket


def state(gw, name):
    return next(k for k in gw.pool.snapshot() if k["name"] == name)


def test_success_first_time():
    gw, clock = make()
    up = FakeUpstream(clock)
    out, ticket = run(gw, up)
    assert out.reply.status == 200 and up.calls == ["k1"]
    assert [a["outcome"] for a in ticket.attempts] == ["ok"]


@pytest.mark.parametrize("failure,outcome,key_state", [
    (FakeReply(429, {"retry-after": "12"}), "rate_limited", "ok"),  # model-scoped: serves others
    (FakeReply(429, body=b'{"error":{"code":"insufficient_quota"}}'), "quota", "cooling"),
    (FakeReply(401), "auth", "dead"),
    (FakeReply(403), "auth", "dead"),
    (FakeReply(500), "server", "cooling"),
    (FakeReply(529), "server", "cooling"),
    (UpstreamError("cannot connect: Connection refused"), "server", "cooling"),
])
def test_failures_are_reissued_on_another_key(failure, outcome, key_state):
    gw, clock = make()
    up = FakeUpstream(clock, {"k1": [failure]})
    out, ticket = run(gw, up)
    assert out.reply.status == 200 and up.calls == ["k1", "k2"]
    assert ticket.attempts[0]["outcome"] == outcome
    assert state(gw, "k1")["state"] == key_state
    if isinstance(failure, FakeReply):
        assert failure.closed  # nothing of the failed attempt is kept


def test_rate_limit_cooldown_follows_retry_after_and_is_model_scoped():
    gw, clock = make()
    run(gw, FakeUpstream(clock, {"k1": [FakeReply(429, {"retry-after": "12"})]}))
    k1 = state(gw, "k1")
    assert k1["cooling_models"] == {"gpt-4o-mini": pytest.approx(12, abs=0.01)}
    # another model may still use k1 at once
    lease = gw.pool.pick("openai", "gpt-4o", exclude={"k2", "k3"})
    assert lease.key.name == "k1"


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_client_errors_pass_through_untouched(status):
    gw, clock = make()
    up = FakeUpstream(clock, {"k1": [FakeReply(status, body=b'{"error":{"message":"bad"}}')]})
    out, _ = run(gw, up)
    assert out.reply.status == status and out.body == b'{"error":{"message":"bad"}}'
    assert up.calls == ["k1"] and state(gw, "k1")["state"] == "ok"


def test_max_attempts_then_502_naming_keys():
    gw, clock = make(n=4, max_attempts=2)
    up = FakeUpstream(clock, {n: [FakeReply(500)] for n in ("k1", "k2", "k3", "k4")})
    out, _ = run(gw, up)
    assert up.calls == ["k1", "k2"]
    assert out.answer.status == 502
    msg = json.loads(out.answer.body)["error"]["message"]
    assert "k1: 500" in msg and "k2: 500" in msg and "sk-" not in msg


def test_all_rate_limited_is_429_with_retry_after():
    gw, clock = make()
    up = FakeUpstream(clock, {n: [FakeReply(429, {"retry-after": s})]
                              for n, s in (("k1", "20"), ("k2", "9"), ("k3", "30"))})
    out, _ = run(gw, up)
    assert out.answer.status == 429 and out.answer.headers["retry-after"] == "9"


def test_no_key_left_is_429_before_any_attempt():
    gw, clock = make(n=1)
    gw.pool.cool_down(gw.pool.by_name["k1"], "", 7.5, "server")
    out, _ = run(gw, FakeUpstream(clock))
    assert out.answer.status == 429 and out.answer.headers["retry-after"] == "8"


def test_queue_waits_for_the_soonest_key_within_queue_s():
    gw, clock = make(n=1, queue_s=5)
    gw.pool.cool_down(gw.pool.by_name["k1"], "", 3, "server")
    up = FakeUpstream(clock)
    t0 = clock.monotonic()
    out, _ = run(gw, up)
    assert out.reply.status == 200 and clock.monotonic() - t0 == pytest.approx(3, abs=0.01)


def test_queue_s_bounds_the_total_wait():
    gw, clock = make(n=1, queue_s=5)
    k1 = gw.pool.by_name["k1"]
    waits = []

    async def sleeper(s):  # each time the key frees, another request takes it first
        waits.append(s)
        clock.advance(s)
        gw.pool.cool_down(k1, "", 2, "server")

    gw.pool.cool_down(k1, "", 2, "server")
    ticket = gw.admit("POST", "/v1/chat/completions", {}, BODY)
    out = asyncio.run(serve(gw, ticket, FakeUpstream(clock), sleep=sleeper))
    assert out.answer.status == 429 and sum(waits) <= 5


def test_timeout_gives_504():
    gw, clock = make(timeout_s=10)

    async def hang(plan):
        await asyncio.sleep(3600)

    ticket = gw.admit("POST", "/v1/chat/completions", {}, BODY)
    ticket.deadline = clock.monotonic() + 0.05  # a real 50 ms on the event loop
    out = asyncio.run(serve(gw, ticket, hang))
    assert out.answer.status == 504
    assert state(gw, "k1")["in_flight"] == 0 and state(gw, "k1")["state"] == "cooling"


def test_client_gone_stops_reissuing():
    gw, clock = make()
    up = FakeUpstream(clock, {"k1": [FakeReply(500)]})
    out, _ = run(gw, up, alive=lambda: False)
    assert up.calls == ["k1"] and out.answer is not None


def test_cancelled_attempt_frees_the_key_without_blame():
    gw, clock = make()

    async def hang(plan):
        await asyncio.sleep(3600)

    async def main():
        ticket = gw.admit("POST", "/v1/chat/completions", {}, BODY)
        task = asyncio.create_task(serve(gw, ticket, hang))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    k1 = state(gw, "k1")
    assert k1["in_flight"] == 0 and k1["failures"] == 0 and k1["state"] == "ok"


def _until_k1_fails(gw, clock):
    """Requests until k1 (always 503) is tried; its siblings succeed meanwhile."""
    for _ in range(6):
        up = FakeUpstream(clock, {"k1": [FakeReply(503)]})
        run(gw, up)
        if "k1" in up.calls:
            return
    raise AssertionError("k1 was never tried")


def test_server_errors_escalate_and_success_resets():
    # A key failing alone while its siblings succeed: cooled, escalating (not an outage).
    gw, clock = make(n=3, max_attempts=1)
    cooldowns = []
    for _ in range(4):
        _until_k1_fails(gw, clock)
        cooldowns.append(state(gw, "k1")["cooldown_s"])
        clock.advance(cooldowns[-1] + 0.01)
    assert [round(c / 5) for c in cooldowns[:3]] == [1, 2, 4]   # 5, 10, 20 (+-10% jitter)
    assert cooldowns[3] <= 40                                  # capped at max_s, jitter too
    assert gw.pool.providers()["openai"] == {"state": "ok"}
    while state(gw, "k1")["successes"] == 0:  # the probe succeeds
        run(gw, FakeUpstream(clock))
    _until_k1_fails(gw, clock)
    assert state(gw, "k1")["cooldown_s"] == pytest.approx(5, rel=0.11)


def test_half_open_lets_one_probe_through():
    gw, clock = make(n=1)
    gw.pool.cool_down(gw.pool.by_name["k1"], "", 2, "server")
    clock.advance(2.01)
    probe = gw.pool.pick("openai", "gpt-4o-mini")
    assert probe.probes == ("",)
    with pytest.raises(Exception):
        gw.pool.pick("openai", "gpt-4o-mini")  # the rest wait for the probe
    gw.pool.release(probe, outcome="ok", latency=0.1)
    assert gw.pool.pick("openai", "gpt-4o-mini").probes == ()


def test_learned_budget_keeps_a_key_away_until_reset():
    gw, clock = make(n=2)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "10s"}
    up = FakeUpstream(clock, {"k1": [FakeReply(200, headers)]})
    run(gw, up)
    assert {gw.pool.pick("openai", "gpt-4o-mini").key.name for _ in range(4)} == {"k2"}


def test_queue_is_bounded_by_the_providers_keys():
    gw, clock = make(n=1, queue_s=5)
    gw.pool.cool_down(gw.pool.by_name["k1"], "", 3, "server")

    async def main():
        release = asyncio.Event()

        async def slow_sleep(s):
            await release.wait()
            clock.advance(s)

        tickets = [gw.admit("POST", "/v1/chat/completions", {}, BODY) for _ in range(5)]
        waiting = [asyncio.create_task(serve(gw, t, FakeUpstream(clock), sleep=slow_sleep))
                   for t in tickets[:4]]
        await asyncio.sleep(0)  # 4 requests (2 x keys + 2) now wait for k1
        fifth = await serve(gw, tickets[4], FakeUpstream(clock), sleep=slow_sleep)
        assert fifth.answer.status == 429  # refused at once, not queued behind them
        release.set()
        out = await waiting[0]
        gw.finish(out.plan, out.reply.status)
        assert out.reply.status == 200
        for task in waiting[1:]:
            task.cancel()

    asyncio.run(main())


def test_learned_budget_counts_requests_still_in_flight():
    gw, clock = make(n=1)
    held = gw.pool.pick("openai", "gpt-4o-mini")  # another request of k1 is in flight
    ticket = gw.admit("POST", "/v1/chat/completions", {}, BODY)
    plan = gw.pick(ticket)
    gw.judge(plan, 200, {"x-ratelimit-remaining-requests": "1",
                         "x-ratelimit-reset-requests": "10s"}, b"{}")
    gw.finish(plan, 200)
    gw.pool.release(held, outcome="ok", latency=0.1)
    with pytest.raises(Exception):  # 1 left minus the 1 in flight: nothing until the reset
        gw.pool.pick("openai", "gpt-4o-mini")


@pytest.mark.parametrize("fail_in", ["judge", "first_byte", "read"])
def test_a_bug_during_an_attempt_frees_the_key_and_closes_the_reply(monkeypatch, fail_in):
    gw, clock = make(n=1)
    reply = FakeReply(500)
    if fail_in == "read":
        async def read():
            raise RuntimeError("bug")
        reply.read = read
    else:
        def boom(*a, **kw):
            raise RuntimeError("bug")
        monkeypatch.setattr(gw, fail_in, boom)
    send = FakeUpstream(clock, {"k1": [reply]})
    ticket = gw.admit("POST", "/v1/chat/completions", {"content-type": "application/json"}, BODY)
    with pytest.raises(RuntimeError):
        asyncio.run(serve(gw, ticket, send))
    k1 = gw.pool.by_name["k1"]
    assert k1.in_flight == 0 and not k1.probing and reply.closed
    assert k1.failures == 0  # keymux's own bug blames no key


def test_reissues_are_counted_by_provider_and_why():
    gw, clock = make(n=4, max_attempts=3)
    up = FakeUpstream(clock, {"k1": [FakeReply(429, {"retry-after": "5"})], "k2": [FakeReply(500)],
                              "k3": [FakeReply(500)]})
    run(gw, up)  # k1 429 -> k2 500 -> k3 500: two re-issues, the last failure answered 502
    sample = gw.metrics.registry.get_sample_value
    assert up.calls == ["k1", "k2", "k3"]
    assert sample("keymux_reissues_total", {"provider": "openai", "outcome": "rate_limited"}) == 1
    assert sample("keymux_reissues_total", {"provider": "openai", "outcome": "server"}) == 1
