"""Client and key budgets (keypool.budgets) through the gateway, with an injected clock."""
import asyncio
import datetime as dt
import json
import logging
from dataclasses import replace
from zoneinfo import ZoneInfo

import pytest

from keypool import reissue
from keypool.answers import Answer
from keypool.budgets import DEFAULT_OUTPUT_TOKENS, estimate
from keypool.clock import FakeClock
from keypool.config import Routing, parse_config
from keypool.config_money import Budget
from keypool.errors import ConfigError
from keypool.gateway import Gateway, Plan
from keypool.prices import table_from
from keypool.usage import Usage

from .helpers import client, config, key, local

TOKEN = "tok-budget-app-0001"
# 1 USD per input token, 2 USD per output token: costs are easy to read
PRICED = local(price=table_from({"input": 1e6, "output": 2e6}))


def at(text, tz="UTC"):
    """Unix time of a local "YYYY-MM-DD HH:MM[:SS]" in ``tz``."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def make(budget=None, keys=None, wall="2026-11-30 12:00", tz="UTC", reset="00:00", clients=None):
    keys = keys or [key("k1", "local"), key("k2", "local")]
    clients = clients or (replace(client("app", TOKEN), budget=budget),)
    cfg = replace(config(keys=keys, clients=clients, providers=[PRICED]),
                  routing=Routing(daily_reset=reset, timezone=tz))
    clock = FakeClock(wall_start=at(wall, tz))
    return Gateway(cfg, clock), clock, cfg


def body(content="x" * 40, max_tokens=10, model="mock-a"):
    return json.dumps({"model": model, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": content}]}).encode()


def post(g, b=None, token=TOKEN):
    return g.handle("POST", "/v1/chat/completions",
                    {"content-type": "application/json", "authorization": f"Bearer {token}"},
                    b or body())


def serve(g, usage=(3, 1), b=None):
    """One whole request: admitted, sent, answered with ``usage`` (input, output)."""
    plan = post(g, b)
    if isinstance(plan, Answer):
        return plan
    u = Usage(input=usage[0], output=usage[1], seen=True)
    g.judge(plan, 200, {}, b"{}")
    g.finish(plan, 200, u)
    g.complete(plan.ticket, 200, plan, u)
    return plan


def refused(a, code="budget_exceeded"):
    assert isinstance(a, Answer), a
    e = json.loads(a.body)["error"]
    assert a.status == 429 and e["code"] == code, e
    return e["message"], int(a.headers["retry-after"])


def test_estimate_reads_max_tokens_or_guesses():
    assert estimate({"max_tokens": 7}, 40) == (10, 7)
    assert estimate({"max_completion_tokens": 0}, 1) == (1, 0)
    assert estimate({}, 0) == (1, DEFAULT_OUTPUT_TOKENS)
    assert estimate(None, 9) == (3, DEFAULT_OUTPUT_TOKENS)


def test_over_daily_usd_is_429_with_retry_after_to_the_day_reset():
    g, clock, _ = make(Budget(daily_usd=10), wall="2026-11-30 21:00")
    assert isinstance(serve(g, (3, 1)), Plan)   # 5 USD
    assert isinstance(serve(g, (3, 1)), Plan)   # 10 USD: at the limit now
    message, retry = refused(post(g))
    assert "daily budget of 10 USD" in message and "app" in message
    assert "2026-12-01 00:00 UTC" in message
    assert retry == 3 * 3600
    assert g.ledger.holds() == 0
    clock.advance(3 * 3600)                      # a new day
    assert isinstance(serve(g), Plan)


@pytest.mark.parametrize("tz,reset,now,retry", [
    ("Asia/Kathmandu", "06:30", "2026-11-30 05:00", 90 * 60),         # +05:45
    ("America/New_York", "00:00", "2026-03-07 23:00", 3600),
    # a DST night: 2026-03-08 has 23 hours in New York, the reset at 06:00 local
    ("America/New_York", "06:00", "2026-03-08 00:00", 5 * 3600),
    ("Europe/Berlin", "02:30", "2026-03-29 00:00", 2 * 3600),         # 02:30 is in the gap
])
def test_retry_after_in_time_zones(tz, reset, now, retry):
    g, clock, _ = make(Budget(daily_usd=1), wall=now, tz=tz, reset=reset)
    serve(g)
    _, got = refused(post(g))
    assert got == retry


def test_monthly_outlasts_the_day_and_names_the_later_reset():
    g, clock, _ = make(Budget(daily_usd=100, monthly_usd=5), wall="2026-11-29 23:00")
    serve(g)                                      # 5 USD: at the monthly limit
    message, retry = refused(post(g))
    assert "monthly budget of 5 USD" in message
    assert retry == int(at("2026-12-01 00:00") - at("2026-11-29 23:00"))
    clock.advance(3600)                           # the day resets, the month does not
    message, retry = refused(post(g))
    assert "monthly" in message and retry == 24 * 3600
    clock.advance(24 * 3600)
    assert isinstance(serve(g), Plan)


def test_daily_tokens_budget():
    g, clock, _ = make(Budget(daily_tokens=8))
    serve(g, (3, 1))
    assert isinstance(serve(g, (3, 1)), Plan)     # 8 tokens
    message, _ = refused(post(g))
    assert "daily budget of 8 tokens" in message


def test_concurrent_requests_reserve_their_estimate():
    # estimate: 160-byte body -> 40 input tokens, max_tokens 10 -> 40 + 20 = 60 USD
    b = body("y" * 75, max_tokens=10)
    tin, tout = estimate(json.loads(b), len(b))
    e = tin * 1 + tout * 2
    g, _, _ = make(Budget(daily_usd=3.5 * e))
    plans = [post(g, b) for _ in range(10)]       # none finished yet: all in flight
    admitted = [p for p in plans if isinstance(p, Plan)]
    assert len(admitted) == 4                     # 0, e, 2e, 3e < 3.5e; 4e is not
    assert all(refused(p)[0] for p in plans[4:])
    assert g.ledger.committed("client", "app", "day", g.clock.wall()) == pytest.approx(4 * e)
    # settle: the real cost (3 USD each) replaces the estimates
    for p in admitted:
        u = Usage(input=1, output=1, seen=True)
        g.finish(p, 200, u)
        g.complete(p.ticket, 200, p, u)
    assert g.ledger.holds() == 0
    assert g.ledger.spent("client", "app", "day", g.clock.wall()) == pytest.approx(12)
    assert isinstance(post(g, b), Plan)


def test_hold_released_on_every_way_out():
    g, clock, _ = make(Budget(daily_usd=1000))
    w = g.clock.wall()

    def held():
        return g.ledger.committed("client", "app", "day", w)

    # a failed attempt that is re-issued keeps the hold; the final one releases it
    p = post(g)
    assert held() > 0
    g.judge(p, 500, {}, b"{}")
    assert held() > 0 and p.finished
    p2 = g.pick(p.ticket)
    assert p2.ticket.hold.key is None            # keys without a budget hold nothing
    g.finish(p2, 200, Usage(input=1, output=1, seen=True))
    assert g.ledger.holds() == 0 and held() == 3
    # a client that left
    p = post(g)
    g.abandon(p)
    assert g.ledger.holds() == 0
    # the gateway's own answer (no key, timeout, 429) ends in complete()
    p = post(g)
    g.complete(p.ticket, 504, answer=g.timed_out(p.ticket))
    assert g.ledger.holds() == 0
    # an exception before any attempt: the glue closes the ticket
    t = g.admit("POST", "/v1/chat/completions", {"content-type": "application/json",
                "authorization": f"Bearer {TOKEN}"}, body())
    assert g.ledger.holds() > 0
    g.close(t)
    g.close(t)                                    # idempotent
    assert g.ledger.holds() == 0 and held() == 3


def test_hold_released_when_the_sender_raises_or_is_cancelled():
    g, _, _ = make(Budget(daily_usd=1000))

    async def boom(plan):
        raise RuntimeError("a bug")

    async def hang(plan):
        await asyncio.sleep(60)

    for send, exc in ((boom, RuntimeError), (hang, asyncio.CancelledError)):
        t = g.admit("POST", "/v1/chat/completions", {"content-type": "application/json",
                    "authorization": f"Bearer {TOKEN}"}, body())

        async def run():
            task = asyncio.ensure_future(reissue.serve(g, t, send))
            await asyncio.sleep(0.01)
            task.cancel()
            await task
        with pytest.raises(exc):
            asyncio.run(run())
        assert g.ledger.holds() == 0
    assert all(k["in_flight"] == 0 for k in g.pool.snapshot())


def test_key_at_budget_leaves_rotation_and_returns(caplog):
    keys = [key("k1", "local", budget=Budget(monthly_usd=5)), key("k2", "local")]
    g, clock, _ = make(keys=keys, clients=(client("app", TOKEN),), wall="2026-11-30 20:00")
    lines = []
    g.pool.keylog.emit = lambda level, line: lines.append(line)
    p = serve(g, (3, 1))                          # round robin: k1 first, 5 USD
    assert p.key.name == "k1"
    assert any("key k1 reached its monthly budget of 5 USD" in l for l in lines)
    for _ in range(3):
        assert serve(g).key.name == "k2"         # k1 is out of rotation
    snap = {k["name"]: k for k in g.pool.snapshot()}
    assert snap["k1"]["state"] == "over_budget" and snap["k2"]["state"] == "ok"
    h = snap["k1"]["held_back"][0]
    assert h["reason"] == "budget" and h["seconds_left"] == 4 * 3600
    assert g.budgets.view("key", "k1", g.clock.wall())["monthly_usd"]["used"] == 5
    assert ("key", "k1", "month", 1.0) in g.budgets.ratios(g.clock.wall())
    # every key at budget: 429 keys_over_budget, Retry-After = the soonest reset (uncapped)
    g.update(replace(g.config, keys=(keys[0], key("k2", "local", budget=Budget(daily_usd=1)))))
    message, retry = refused(post(g), "keys_over_budget")
    assert retry == 4 * 3600 and "budget" in message
    clock.advance(4 * 3600)                       # December: both back
    g.budgets.sweep(g.clock.wall())
    assert any("key k1 is back in rotation" in l for l in lines)
    assert {serve(g).key.name for _ in range(2)} == {"k1", "k2"}


def test_key_budget_counts_requests_in_flight_on_it():
    keys = [key("k1", "local", budget=Budget(daily_usd=50))]
    g, _, _ = make(keys=keys, clients=(client("app", TOKEN),))
    b = body("z" * 200, max_tokens=10)            # estimate 74 + 20 > 50 USD
    p = post(g, b)
    assert p.ticket.hold.key == "k1"
    assert g.pool.snapshot()[0]["held_back"][0]["detail"] == "reserved by requests in flight"
    refused(post(g, b), "keys_over_budget")
    g.finish(p, 200, Usage(input=1, output=1, seen=True))
    assert isinstance(post(g, b), Plan)


def test_reload_applies_budgets_at_once_and_keeps_holds():
    g, clock, cfg = make(Budget(daily_usd=5))
    serve(g, (3, 1))
    refused(post(g))
    raise_to = (replace(client("app", TOKEN), budget=Budget(daily_usd=50)),)
    g.update(replace(cfg, clients=raise_to))
    p = post(g)
    assert isinstance(p, Plan)
    g.update(replace(cfg, clients=raise_to, routing=Routing(timezone="Asia/Tokyo")))
    assert g.ledger.holds() > 0                  # a reload keeps the request's hold
    assert g.ledger.committed("client", "app", "day", clock.wall()) > 5
    g.finish(p, 200, Usage(input=1, output=1, seen=True))
    assert g.ledger.holds() == 0
    g.update(replace(cfg, clients=(client("app", TOKEN),)))   # budget removed
    assert isinstance(serve(g), Plan)


def test_budget_survives_a_restart_through_the_ledger_rows():
    g, clock, cfg = make(Budget(daily_usd=5))
    serve(g, (3, 1))
    rows = [dict(zip(("day", "key", "client", "provider", "model"), r), **v)
            for r, v in g.ledger.drain().items()]
    g2 = Gateway(cfg, clock)
    g2.ledger.restore(rows)
    refused(post(g2))


def test_metrics_show_used_ratio():
    g, _, _ = make(Budget(daily_usd=10, daily_tokens=100, monthly_usd=20))
    serve(g, (3, 1))
    text = g.metrics.render().decode()
    assert 'keymux_budget_used_ratio{name="app",period="day",scope="client"} 0.5' in text
    assert 'keymux_budget_used_ratio{name="app",period="month",scope="client"} 0.25' in text


BASE = """
providers: {local: {base_url: "http://127.0.0.1:9/v1"}}
keys:
  - {name: k, provider: local, key: sk-aaaaaaaaaaaa%s}
clients:
  - {name: c, token: tttttttttttt%s}
"""


@pytest.mark.parametrize("keyb,clientb,problem", [
    ("", ", budget: {}", "expected at least one of daily_usd"),
    ("", ", budget: {daily_usd: 0}", "positive number"),
    ("", ", budget: {weekly_usd: 3}", "weekly_usd"),
    ("", ", budget: {daily_tokens: 1.5}", "positive integer"),
    (", budget: {daily_tokens: 5}", "", "daily_tokens"),
    (", budget: 5", "", "expected a mapping"),
])
def test_config_refuses_bad_budgets_with_their_line(keyb, clientb, problem):
    with pytest.raises(ConfigError) as e:
        parse_config(BASE % (keyb, clientb), env={})
    assert problem in str(e.value)
    assert e.value.line in (4, 6)


def test_config_reads_budgets():
    c = parse_config(BASE % (", budget: {monthly_usd: 50, daily_usd: 2}",
                             ", budget: {daily_usd: 5, monthly_usd: 100, daily_tokens: 2000000}"),
                     env={})
    assert c.keys[0].budget == Budget(daily_usd=2, monthly_usd=50)
    assert c.clients[0].budget == Budget(5, 100, 2000000)
