"""Budgets through a real mitmdump: a client over its daily budget gets 429
budget_exceeded with Retry-After to the day's reset (also after a restart); 20 parallel
requests against a budget of 4.5 requests' cost admit exactly 5; a key at its budget leaves
rotation and the other key serves."""
import json
import math
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from genai_prices import Usage as GUsage, calc_price

from keypool.budgets import estimate
from keypool.demo.mock_responses import prompt_tokens
from keypool.periods import Periods

from .harness import SIDECAR_TOKEN, GatewayProcess, stats, wait_for

K1, K2 = "sk-budget-openai-000001", "sk-budget-openai-000002"
TOKEN = "kmx-budget-client-token-01"
MODEL = "gpt-4o-mini"                       # priced by genai-prices
TEXT = "y" * 2000                           # the mock bills len // 4 = 500 prompt tokens
COMPLETION = 5                              # the mock's default: 5 chunks = 5 tokens
MESSAGES = [{"role": "user", "content": TEXT}]
TZ, RESET = "Asia/Kathmandu", "06:30"       # UTC+05:45: a reset no UTC hour lines up with


def cost_one():
    """What one request costs: genai-prices' figure for the mock's known usage."""
    tin = prompt_tokens({"messages": MESSAGES})
    return float(calc_price(GUsage(input_tokens=tin, output_tokens=COMPLETION), MODEL,
                            provider_id="openai").total_price)


def config(mock_url, client_budget="", key_budget=""):
    return f"""
providers:
  openai: {{base_url: "{mock_url}/v1", models: ["gpt-*"]}}
keys:
  - {{name: ko1, provider: openai, key: {K1}{key_budget}}}
  - {{name: ko2, provider: openai, key: {K2}}}
clients:
  - {{name: app, token: {TOKEN}{client_budget}}}
routing: {{daily_reset: "{RESET}", timezone: "{TZ}", strategy: round_robin}}
"""


def sdk():
    return openai.OpenAI(base_url=GW_URL[0] + "/v1", api_key=TOKEN, max_retries=0, timeout=20)


GW_URL = [""]


def ask(oa=None):
    """One request: ("ok", usage) or (status, code, retry-after)."""
    oa = oa or sdk()
    try:
        r = oa.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=COMPLETION)
        return ("ok", r.usage.prompt_tokens, r.usage.completion_tokens)
    except openai.APIStatusError as e:
        return (e.status_code, e.body.get("code") if isinstance(e.body, dict) else None,
                e.response.headers.get("retry-after"), e.message)




def metrics(gw):
    req = urllib.request.Request(gw.url + "/metrics",
                                 headers={"x-keymux-admin-token": SIDECAR_TOKEN})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


def open_gw(tmp_path, confdir, text):
    g = GatewayProcess(tmp_path, text, confdir=confdir).start()
    GW_URL[0] = g.url
    return g


def assert_day_retry_after(got):
    want = Periods(RESET, TZ).day_end(time.time()) - time.time()
    assert abs(int(got) - math.ceil(want)) <= 2, (got, want)


def test_client_over_daily_budget_429_retry_after_and_restart(mock, tmp_path, confdir):
    c = cost_one()
    text = config(mock.base_url, client_budget=f", budget: {{daily_usd: {1.5 * c!r}}}")
    g = open_gw(tmp_path, confdir, text)
    try:
        assert ask()[0] == "ok"              # spent c < 1.5c: admitted
        assert ask()[0] == "ok"              # admitted, and crosses the limit (2c)
        status, code, retry, message = ask()
        assert (status, code) == (429, "budget_exceeded")
        assert "daily budget" in message and "Asia/Kathmandu" in message
        assert_day_retry_after(retry)
        assert mock.count() == 2              # the refused request never went upstream
        b = stats(g)["budgets"]["clients"]["app"]["daily_usd"]
        assert b["used"] == pytest.approx(2 * c, rel=1e-9) and b["reserved"] == 0
        m = [l for l in metrics(g).splitlines() if l.startswith("keymux_budget_used_ratio{")]
        assert any('scope="client"' in l and 'period="day"' in l and
                   float(l.split()[-1]) == pytest.approx(2 / 1.5) for l in m), m
    finally:
        g.stop()
    g = open_gw(tmp_path, confdir, None)       # a restart: the ledger comes back from the store
    try:
        status, code, retry, _ = ask()
        assert (status, code) == (429, "budget_exceeded")
        assert_day_retry_after(retry)
        assert mock.count() == 2
    finally:
        g.stop()


def test_parallel_requests_admit_exactly_what_the_budget_allows(mock, tmp_path, confdir):
    """The bound: a request is admitted while committed (spent + estimates held by requests
    in flight) < B, with B = 4.5 c. Each admitted request counts at least its cost c (settled)
    and at most its estimate e (held), c <= e < 1.125 c here. Admitting the n-th needs
    (n - 1) c <= committed < 4.5 c, so n <= 5; refusing one needs committed >= 4.5 c, so at
    least 4.5 c / e > 4 requests, i.e. 5, were admitted before. Hence exactly 5 answer 200
    and 15 get 429 budget_exceeded, however the 20 interleave."""
    c = cost_one()
    body = json.dumps({"messages": MESSAGES, "model": MODEL, "max_tokens": COMPLETION})
    tin, tout = estimate({"max_tokens": COMPLETION}, len(body) + 40)  # the SDK's own bytes
    e = float(calc_price(GUsage(input_tokens=tin, output_tokens=tout), MODEL,
                         provider_id="openai").total_price)
    assert c <= e < 1.125 * c
    for k in (K1, K2):  # slow answers: requests overlap, so holds in flight must count
        mock.set_behavior(k, delay_ms=300)
    text = config(mock.base_url, client_budget=f", budget: {{daily_usd: {4.5 * c!r}}}")
    g = open_gw(tmp_path, confdir, text)
    try:
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda _: ask(), range(20)))
        ok = [r for r in results if r[0] == "ok"]
        over = [r for r in results if r[:2] == (429, "budget_exceeded")]
        assert len(ok) == 5 and len(over) == 15, results
        assert mock.count() == 5
        s = stats(g)
        b = s["budgets"]["clients"]["app"]["daily_usd"]
        assert b["used"] == pytest.approx(5 * c, rel=1e-9) and b["reserved"] == 0
    finally:
        g.stop()


def test_key_at_budget_leaves_rotation(mock, tmp_path, confdir):
    c = cost_one()
    text = config(mock.base_url, key_budget=f", budget: {{monthly_usd: {0.5 * c!r}}}")
    g = open_gw(tmp_path, confdir, text)
    try:
        oa = sdk()
        results = [ask(oa) for _ in range(6)]
        assert all(r[0] == "ok" for r in results), results
        used = [r["key"] for r in mock.requests()]
        assert used.count(K1) == 1 and used.count(K2) == 5   # ko1 served once, then left
        keys = {k["name"]: k for k in stats(g)["keys"]}
        assert keys["ko1"]["state"] == "over_budget"
        held = keys["ko1"]["held_back"][0]
        assert held["reason"] == "budget" and "monthly budget" in held["detail"]
        assert held["seconds_left"] == pytest.approx(
            Periods(RESET, TZ).month_end(time.time()) - time.time(), abs=5)
        assert keys["ko1"]["budget"]["monthly_usd"]["used"] == pytest.approx(c, rel=1e-9)
        assert keys["ko2"]["state"] == "ok" and keys["ko2"]["budget"] is None
        assert 'keymux_key_state{key="ko1",provider="openai",state="over_budget"} 1.0' in metrics(g)
        assert wait_for(lambda: "key ko1 reached its monthly budget" in g.log())
        assert K1 not in g.log()
    finally:
        g.stop()
