"""The seam keypool.shared: the attempt loop asks for a shared slot, a refused one gives the
key back untouched and holds it; events from another process apply to this pool."""
import pytest

from keypool.clock import FakeClock
from keypool.pool import Pool
from keypool.poolstate import fingerprint
from keypool.shared import Event, LocalState, Slot, apply, local_events

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


def test_a_client_refused_across_processes_gets_the_answer_and_the_key_back():
    from keypool import answers
    gw, clock = make(n=1)
    refusal = answers.error(429, "client 'c' is over its 2 requests per minute",
                            "client_rate_limited", retry_after=3.0)

    class Refusing(FakeShared):
        async def reserve(self, key, est_tokens=0, ask=None):
            self.asked.append(key.name)
            return None, refusal
    gw.pool.shared = Refusing()
    out, ticket = run(gw, FakeUpstream(clock))
    assert out.answer is refusal and ticket.ask is None
    k1 = gw.pool.by_name["k1"]
    assert (k1.in_flight, k1.requests) == (0, 0)  # the key's slot was not taken


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


def _gateway_with_client(**client_kw):
    import random
    from keypool.config import ClientSpec
    from keypool.gateway import Gateway
    from .test_reissue import BODY
    spec = ClientSpec(name="team", token="kmx-team-token-000000001", **client_kw)
    gw = Gateway(config(keys=[key("k1")], clients=(spec,)), FakeClock(), random.Random(0))
    headers = {"content-type": "application/json",
               "authorization": "Bearer kmx-team-token-000000001"}
    return gw, lambda: gw.admit("POST", "/v1/chat/completions", headers, BODY)


def test_the_default_state_asks_nothing_of_another_process():
    from keypool.config_money import Budget
    gw, admit = _gateway_with_client(rpm=5, budget=Budget(daily_tokens=10_000))
    ticket = admit()
    assert ticket.ask is None and ticket.hold is not None  # the local hold, as ever


def test_shared_limits_carry_the_clients_rpm_and_hold_to_the_first_reservation():
    from keypool.config_money import Budget
    gw, admit = _gateway_with_client(rpm=5, budget=Budget(daily_tokens=10_000))
    shared = gw.pool.shared = FakeShared()
    shared.shares_limits = True
    seen = []
    orig = shared.reserve

    async def spy(k, est_tokens=0, ask=None):
        seen.append(ask)
        return await orig(k, est_tokens, ask)
    shared.reserve = spy
    shared.release_hold = lambda token: seen.append(("released", token))
    out, ticket = run_ticket(gw, admit())
    ask = seen[0]
    assert ask.client == "team" and ask.rpm == 5 and ask.held and ask.limits == (0, 0, 10_000)
    assert ask.tokens == ticket.hold.tokens and ticket.ask is None
    gw.finish(out.plan, 200)  # the request is over: its shared hold goes too
    assert seen[-1] == ("released", "t1") and ticket.shared_hold is None


def run_ticket(gw, ticket):
    import asyncio
    from keypool.reissue import serve
    from .test_reissue import FakeUpstream

    async def sleeper(s):
        gw.clock.advance(s)
    return asyncio.run(serve(gw, ticket, FakeUpstream(gw.clock), sleep=sleeper)), ticket
