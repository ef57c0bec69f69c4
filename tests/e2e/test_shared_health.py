"""Two real gateway processes on one redis-server: a provider outage seen by one makes the
other answer the fast 503 provider_outage without calling the upstream, while one probe
at a time (the first process's) finds out whether the provider is back."""
import http.client
import json
import os
import threading
import time

import pytest

from tests.redisserver import RedisServer, needs_redis

from .harness import GatewayProcess, health, wait_for

pytestmark = needs_redis

O1, O2 = "sk-shared-outage-key-0001", "sk-shared-outage-key-0002"
R1, R2 = "sk-shared-rr-key-00000001", "sk-shared-rr-key-00000002"


def yaml(mock_url: str, redis_url: str, prefix: str) -> str:
    return f"""
version: 1
state: {{backend: redis, url: {redis_url}, prefix: {prefix}}}
providers:
  pout: {{base_url: "{mock_url}/v1", models: ["out-*"]}}
  prr: {{base_url: "{mock_url}/v1", models: ["rr-*"]}}
keys:
  - {{name: r1, provider: prr, key: {R1}}}
  - {{name: r2, provider: prr, key: {R2}}}
  - {{name: o1, provider: pout, key: {O1}}}
  - {{name: o2, provider: pout, key: {O2}}}
"""


@pytest.fixture(scope="module")
def pair(mock, tmp_path_factory, confdir):
    with RedisServer() as server:
        text = yaml(mock.base_url, server.url, f"health{os.getpid()}")
        # numbered as `keymux run --workers 2` numbers its workers (their round robins start
        # half a cycle apart); set by hand, as for processes an operator starts
        env = [{"KEYMUX_WORKER": str(i), "KEYMUX_WORKERS": "2"} for i in (1, 2)]
        with GatewayProcess(tmp_path_factory.mktemp("gwa"), text, confdir=confdir,
                            env=env[0]) as a, \
                GatewayProcess(tmp_path_factory.mktemp("gwb"), text, confdir=confdir,
                               env=env[1]) as b:
            assert wait_for(lambda: all(health(g).get("shared_state", {}).get("ok")
                                        for g in (a, b)))
            yield a, b


def chat(gw, model: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "hi"}]}),
            {"content-type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def pout(gw) -> dict:
    return health(gw)["providers"]["pout"]


def test_an_outage_seen_by_one_process_is_answered_by_the_other_without_upstream(pair, mock):
    a, b = pair
    for secret in (O1, O2):
        mock.set_behavior(secret, status=503)
    chat(a, "out-1")  # both keys answer 503: a declares the provider down
    t0 = time.monotonic()
    assert pout(a)["state"] == "outage"
    assert wait_for(lambda: pout(b)["state"] == "outage", timeout=2, step=0.005)
    print(f"b saw the outage {(time.monotonic() - t0) * 1000:.1f} ms after a answered")
    assert mock.count(O1) + mock.count(O2) == 2

    for secret in (O1, O2):  # the provider is back, slowly: a's probe takes a while
        mock.set_behavior(secret, delay_ms=3000)
    probe: list = []

    def probe_from_a():  # a's requests get 503 until its probe is due; that one waits
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, body = chat(a, "out-1")
            if body.get("error", {}).get("code") != "provider_outage":
                probe.append(status)
                return
            time.sleep(0.02)

    t = threading.Thread(target=probe_from_a)
    t.start()
    try:
        assert wait_for(lambda: mock.count(O1) + mock.count(O2) == 3, timeout=5, step=0.01)
        assert wait_for(lambda: pout(b)["probing"], timeout=2, step=0.005)  # announced
        for _ in range(5):  # b holds its own probe while a's is out: no upstream call
            status, body = chat(b, "out-1")
            assert status == 503 and body["error"]["code"] == "provider_outage"
        assert mock.count(O1) + mock.count(O2) == 3
    finally:
        t.join(15)
    assert probe == [200]  # a's probe succeeded: the outage is over, in b too
    assert wait_for(lambda: pout(b) == {"state": "ok"}, timeout=2, step=0.005)
    for secret in (O1, O2):
        mock.set_behavior(secret)
    assert chat(b, "out-1")[0] == 200


def test_two_processes_round_robins_start_apart(pair, mock):
    a, b = pair
    served = []
    for _ in range(4):  # requests reach the fleet in turn, as a balancer sends them
        for gw in (a, b):
            before = mock.count(R1)
            assert chat(gw, "rr-1")[0] == 200
            served.append("r1" if mock.count(R1) > before else "r2")
    # each round's two requests (one per process) on different keys, as one process would
    assert all(served[i] != served[i + 1] for i in range(0, 8, 2)), served
    assert served.count("r1") == served.count("r2") == 4
