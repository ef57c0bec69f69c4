"""Two real gateway processes on one pool through a real redis-server: a key's tpm, a
client's rpm and a client's budget hold across both (checked and taken in the one reserve
call per attempt, keypool.shared_lua), and a killed process's budget holds lapse."""
import http.client
import json
import os
import threading

import pytest

from keypool.budgets import estimate
from keypool.limits import estimate_tokens

from tests.redisserver import RedisServer, needs_redis

from .harness import GatewayProcess, health, wait_for

pytestmark = needs_redis

T1, F1, H1, D1 = ("sk-counts-tpm-key-000001", "sk-counts-free-key-00001",
                  "sk-counts-hold-key-00001", "sk-counts-dead-key-00001")
APP, RATED, BURST, DOOMED = ("kmx-counts-app-token-0001", "kmx-counts-rated-token-01",
                             "kmx-counts-burst-token-01", "kmx-counts-doomed-token-1")
MAX_TOKENS = 100


def body(model: str) -> bytes:
    return json.dumps({"model": model, "max_tokens": MAX_TOKENS,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()


def tpm_est() -> int:  # what the tpm window reserves for one request
    data = json.loads(body("tpm-1"))
    return estimate_tokens(data, len(body("tpm-1")))


def hold_est(model: str) -> int:  # what a client's daily_tokens budget holds for one
    tin, tout = estimate(json.loads(body(model)), len(body(model)))
    return tin + tout


def yaml(mock_url: str, redis_url: str, prefix: str) -> str:
    # tpm: room for 4 requests' estimates, not 5; budgets: 5 (burst) and 2 (doomed) holds
    return f"""
version: 1
state: {{backend: redis, url: {redis_url}, prefix: {prefix}, reservation_ttl_s: 1}}
routing: {{queue_s: 2}}
providers:
  ptpm: {{base_url: "{mock_url}/v1", models: ["tpm-*"]}}
  pfree: {{base_url: "{mock_url}/v1", models: ["free-*"]}}
  phold: {{base_url: "{mock_url}/v1", models: ["hold-*"]}}
  pdead: {{base_url: "{mock_url}/v1", models: ["dead-*"]}}
clients:
  - {{name: app, token: {APP}}}
  - {{name: rated, token: {RATED}, rpm: 4}}
  - {{name: burst, token: {BURST}, budget: {{daily_tokens: {5 * hold_est("hold-1") - 1}}}}}
  - {{name: doomed, token: {DOOMED}, budget: {{daily_tokens: {2 * hold_est("dead-1") - 1}}}}}
keys:
  - {{name: t1, provider: ptpm, key: {T1}, tpm: {4 * tpm_est() + tpm_est() // 2}}}
  - {{name: f1, provider: pfree, key: {F1}}}
  - {{name: h1, provider: phold, key: {H1}}}
  - {{name: d1, provider: pdead, key: {D1}}}
"""


@pytest.fixture(scope="module")
def pair(mock, tmp_path_factory, confdir):
    with RedisServer() as server:
        text = yaml(mock.base_url, server.url, f"cnt{os.getpid()}")
        with GatewayProcess(tmp_path_factory.mktemp("gwa"), text, confdir=confdir) as a, \
                GatewayProcess(tmp_path_factory.mktemp("gwb"), text, confdir=confdir) as b:
            assert wait_for(lambda: all(health(g).get("shared_state", {}).get("ok")
                                        for g in (a, b)))
            yield a, b


def chat(gw, model: str, token: str = APP, timeout: float = 15) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body(model),
                     {"content-type": "application/json", "authorization": f"Bearer {token}"})
        r = conn.getresponse()
        data = json.loads(r.read() or b"{}")
        return r.status, (data.get("error") or {}).get("code", "")
    finally:
        conn.close()


def parallel(calls) -> list[tuple[int, str]]:
    out: list = [None] * len(calls)

    def run(i, gw, model, token):
        try:
            out[i] = chat(gw, model, token)
        except OSError as e:  # a gateway killed under it
            out[i] = (0, type(e).__name__)

    threads = [threading.Thread(target=run, args=(i, *c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_a_keys_tpm_holds_across_both_processes(pair, mock):
    a, b = pair
    mock.set_behavior(T1, delay_ms=3000)  # none settles before every request reserved
    got = parallel([(gw, "tpm-1", APP) for _ in range(5) for gw in (a, b)])
    # 4 estimates fit the tpm, 5 do not: 4 reach upstream, though each process alone has
    # room for 4 (without sharing, 8 would)
    assert mock.count(T1) == 4
    assert sorted(got).count((200, "")) == 4
    assert all(g == (429, "all_keys_busy") for g in got if g[0] != 200)
    mock.set_behavior(T1)


def test_a_clients_rpm_holds_across_both_processes(pair, mock):
    a, b = pair
    got = [chat(gw, "free-1", RATED) for _ in range(4) for gw in (a, b)]
    assert got[:4] == [(200, "")] * 4  # 2 each: each process alone would admit 4
    assert got[4:] == [(429, "client_rate_limited")] * 4
    assert mock.count(F1) == 4


def test_parallel_requests_on_both_admit_exactly_what_the_budget_allows(pair, mock):
    a, b = pair
    mock.set_behavior(H1, delay_ms=3000)  # every request is admitted or refused while held
    got = parallel([(gw, "hold-1", BURST) for _ in range(10) for gw in (a, b)])
    # committed (holds) < 5 estimates admits a 5th, not a 6th, whichever process asks
    assert got.count((200, "")) == 5, got
    assert got.count((429, "budget_exceeded")) == 15
    assert mock.count(H1) == 5
    mock.set_behavior(H1)


def test_a_killed_process_budget_holds_lapse(pair, mock):
    a, b = pair
    mock.set_behavior(D1, delay_ms=4000)
    threads = [threading.Thread(target=parallel, args=([(a, "dead-1", DOOMED)],))
               for _ in range(2)]
    for t in threads:
        t.start()
    assert wait_for(lambda: mock.count(D1) == 2)
    assert chat(b, "dead-1", DOOMED) == (429, "budget_exceeded")  # a holds the budget
    a.kill9()  # no request of a settles or releases: its holds lapse by the ttl (1 s)
    mock.set_behavior(D1)
    assert wait_for(lambda: chat(b, "dead-1", DOOMED)[0] == 200, timeout=5, step=0.2)
    for t in threads:
        t.join(10)
