"""Two real gateway processes on one pool through a real redis-server (state: backend redis):
rpm across both, a 429 seen by one cools the key for the other, a killed process's in-flight
slots lapse, and Redis stopped and started mid-load loses no request."""
import http.client
import json
import os
import threading
import time

import pytest

from tests.redisserver import RedisServer, needs_redis

from .harness import GatewayProcess, get, health, stats, wait_for

pytestmark = needs_redis

R1 = "sk-shared-rpm-key-000001"
C1 = "sk-shared-cool-key-00001"
M1 = "sk-shared-slow-key-00001"
L1, L2 = "sk-shared-load-key-00001", "sk-shared-load-key-00002"
B1 = "sk-shared-budget-key-0001"
APP, CAPPED = "kmx-shared-app-token-0001", "kmx-shared-capped-token-01"


def yaml(mock_url: str, redis_url: str, prefix: str) -> str:
    return f"""
version: 1
state:
  backend: redis
  url: {redis_url}
  prefix: {prefix}
  reservation_ttl_s: 1
routing:
  queue_s: 5
providers:
  prpm: {{base_url: "{mock_url}/v1", models: ["rpm-*"]}}
  pcool: {{base_url: "{mock_url}/v1", models: ["cool-*"]}}
  pslow: {{base_url: "{mock_url}/v1", models: ["slow-*"]}}
  pload: {{base_url: "{mock_url}/v1", models: ["load-*"]}}
  pbud: {{base_url: "{mock_url}/v1", models: ["bud-*"]}}
clients:
  - {{name: app, token: {APP}}}
  - {{name: capped, token: {CAPPED}, budget: {{daily_tokens: 60}}}}
keys:
  - {{name: r1, provider: prpm, key: {R1}, rpm: 6}}
  - {{name: c1, provider: pcool, key: {C1}}}
  - {{name: m1, provider: pslow, key: {M1}, max_in_flight: 2}}
  - {{name: l1, provider: pload, key: {L1}, rpm: 100000}}
  - {{name: l2, provider: pload, key: {L2}}}
  - {{name: b1, provider: pbud, key: {B1}}}
"""


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def pair(mock, redis_server, tmp_path_factory, confdir):
    prefix = f"e2e{os.getpid()}"
    text = yaml(mock.base_url, redis_server.url, prefix)
    with GatewayProcess(tmp_path_factory.mktemp("gwa"), text, confdir=confdir) as a, \
            GatewayProcess(tmp_path_factory.mktemp("gwb"), text, confdir=confdir) as b:
        assert wait_for(lambda: all(health(g).get("shared_state", {}).get("ok") for g in (a, b)))
        yield a, b, prefix


def chat(gw, model: str, timeout: float = 15, token: str = APP,
         text: str = "hi") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(
            {"model": model, "messages": [{"role": "user", "content": text}]}),
            {"content-type": "application/json", "authorization": f"Bearer {token}"})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()




def key_state(gw, name: str) -> dict:
    return next(k for k in stats(gw)["keys"] if k["name"] == name)


def tokens_used(gw) -> int:
    return stats(gw)["budgets"]["clients"]["capped"]["daily_tokens"]["used"]


def test_a_keys_rpm_holds_across_both_processes(pair, mock):
    a, b, _ = pair
    statuses = [chat(gw, "rpm-1")[0] for _ in range(6) for gw in (a, b)]
    assert mock.count(R1) == 6  # not 6 per process
    assert statuses.count(200) == 6 and set(statuses) == {200, 429}


def test_a_429_seen_by_one_cools_the_key_for_the_other(pair, mock):
    a, b, _ = pair
    mock.set_behavior(C1, status=429, times=1, headers={"Retry-After": "30"})
    assert chat(a, "cool-1")[0] == 429
    t0 = time.monotonic()
    # a rate limit cools the (key, model) pair
    assert "cool-1" in key_state(a, "c1")["cooling_models"]
    assert wait_for(lambda: "cool-1" in key_state(b, "c1")["cooling_models"], timeout=2,
                    step=0.005)
    seen_after = time.monotonic() - t0
    status, body = chat(b, "cool-1")
    assert status == 429 and body["error"]["code"] == "all_keys_busy"
    assert mock.count(C1) == 1  # b never sent it upstream
    print(f"b saw the cooldown {seen_after * 1000:.1f} ms after a answered")
    b.reset("c1")  # an operator's reset in b clears it in a too
    assert wait_for(lambda: not key_state(a, "c1")["cooling_models"], timeout=2, step=0.005)


def test_a_client_budget_holds_across_both_processes(pair, mock):
    a, b, _ = pair
    text = "x" * 80  # the mock bills 20 prompt + 5 completion tokens: 25 a request
    served = 0
    for gw, other in ((a, b), (b, a), (a, b)):  # 0, 25, 50 tokens used: each admitted
        assert chat(gw, "bud-1", token=CAPPED, text=text)[0] == 200
        served += 25
        assert wait_for(lambda: tokens_used(other) == served, timeout=2, step=0.01)
    for gw in (a, b):  # 75 of 60: both refuse, though each served at most two itself
        status, body = chat(gw, "bud-1", token=CAPPED, text=text)
        assert status == 429 and body["error"]["code"] == "budget_exceeded"
    assert mock.count(B1) == 3


def test_redis_stopped_and_started_mid_load_loses_no_request(pair, mock, redis_server):
    a, b, _ = pair
    results: list[int] = []
    stop = threading.Event()

    def load(gw):
        while not stop.is_set():
            results.append(chat(gw, "load-1")[0])

    threads = [threading.Thread(target=load, args=(g,)) for g in (a, b)]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: len(results) > 20)
        redis_server.stop()
        assert wait_for(lambda: all(health(g)["status"] == "degraded" for g in (a, b)))
        h = health(a)["shared_state"]
        assert h["ok"] is False and h["error"] and h["backend"] == "redis"
        metrics = get(a, "/metrics")[1].decode()
        assert 'keymux_shared_state_up{backend="redis"} 0.0' in metrics
        during = len(results)
        assert wait_for(lambda: len(results) > during + 20)
        redis_server.start()
        assert wait_for(lambda: all(health(g)["status"] == "ok" for g in (a, b)), timeout=10)
        after = len(results)
        assert wait_for(lambda: len(results) > after + 20)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert results and set(results) == {200}
    assert 'keymux_shared_state_up{backend="redis"} 1.0' in get(b, "/metrics")[1].decode()


def test_a_killed_process_releases_its_slots_after_the_ttl(pair, mock, redis_server):
    import redis
    a, b, prefix = pair
    mock.set_behavior(M1, delay_ms=4000)
    def doomed():  # its gateway is killed under it: no answer is expected
        try:
            chat(a, "slow-1")
        except OSError:
            pass

    threads = [threading.Thread(target=doomed) for _ in range(2)]
    for t in threads:
        t.start()
    assert wait_for(lambda: mock.count(M1) == 2)
    r = redis.Redis.from_url(redis_server.url)
    assert r.zcard(f"{prefix}:inf:m1") == 2  # both slots held by a
    a.kill9()
    mock.set_behavior(M1)  # fast again
    status, _ = chat(b, "slow-1")  # queued until a's slots lapse (ttl 1 s), then served
    assert status == 200 and mock.count(M1) == 3
    # a's lapsed, b's own released once its request ended (written in the background)
    assert wait_for(lambda: r.zcard(f"{prefix}:inf:m1") == 0, timeout=2, step=0.01)
    r.close()
    for t in threads:
        t.join(10)
