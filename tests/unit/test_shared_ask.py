"""A client's admission shared across processes (keypool.shared_ask), without Redis: the
default state asks nothing; with shared limits the first reservation carries the client's
rpm and hold, a refusal answers the client and gives the key back."""
import asyncio
import random

from keypool import answers
from keypool.clock import FakeClock
from keypool.config import ClientSpec
from keypool.config_money import Budget
from keypool.gateway import Gateway
from keypool.reissue import serve

from .helpers import config, key
from .test_reissue import BODY, FakeUpstream, make, run
from .test_shared import FakeShared


def test_a_client_refused_across_processes_gets_the_answer_and_the_key_back():
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


def _gateway_with_client(**client_kw):
    spec = ClientSpec(name="team", token="kmx-team-token-000000001", **client_kw)
    gw = Gateway(config(keys=[key("k1")], clients=(spec,)), FakeClock(), random.Random(0))
    headers = {"content-type": "application/json",
               "authorization": "Bearer kmx-team-token-000000001"}
    return gw, lambda: gw.admit("POST", "/v1/chat/completions", headers, BODY)


def test_the_default_state_asks_nothing_of_another_process():
    gw, admit = _gateway_with_client(rpm=5, budget=Budget(daily_tokens=10_000))
    ticket = admit()
    assert ticket.ask is None and ticket.hold is not None  # the local hold, as ever


def test_shared_limits_carry_the_clients_rpm_and_hold_to_the_first_reservation():
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
    async def sleeper(s):
        gw.clock.advance(s)
    return asyncio.run(serve(gw, ticket, FakeUpstream(gw.clock), sleep=sleeper)), ticket
