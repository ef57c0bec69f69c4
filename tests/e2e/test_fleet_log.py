"""Two real gateway processes on one redis-server, each with its own state_dir (as two
hosts): the web UI of either shows both processes' requests with their writer, and
/_keymux/stats' ``fleet`` counts both."""
import http.client
import json
import os
import re
from collections import Counter

import pytest
import redis

from tests.redisserver import RedisServer, needs_redis

from .harness import GatewayProcess, get, health, stats, wait_for

pytestmark = needs_redis

K1 = "sk-fleet-log-key-0000001"
APP = "kmx-fleet-log-app-token-01"
ADMIN = "fleet-log-admin-token-0001"


def yaml(mock_url: str, redis_url: str, prefix: str) -> str:
    return f"""
version: 1
state: {{backend: redis, url: "{redis_url}", prefix: {prefix}, log_max: 1000}}
providers:
  pfl: {{base_url: "{mock_url}/v1", models: ["fl-*"]}}
clients:
  - {{name: app, token: {APP}}}
keys:
  - {{name: f1, provider: pfl, key: {K1}}}
"""


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


def chat(gw) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(
            {"model": "fl-1", "messages": [{"role": "user", "content": "hi"}]}),
            {"content-type": "application/json", "authorization": f"Bearer {APP}"})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()




def test_the_ui_shows_both_processes_requests(mock, redis_server, tmp_path_factory, confdir):
    prefix = f"fl{os.getpid()}"
    text = yaml(mock.base_url, redis_server.url, prefix)
    with GatewayProcess(tmp_path_factory.mktemp("hosta"), text, confdir=confdir) as a, \
            GatewayProcess(tmp_path_factory.mktemp("hostb"), text, confdir=confdir) as b:
        assert wait_for(lambda: all(health(g).get("fleet_log", {}).get("ok") for g in (a, b)))
        assert [chat(a) for _ in range(3)] + [chat(b) for _ in range(2)] == [200] * 5
        r = redis.Redis.from_url(redis_server.url)
        assert wait_for(lambda: r.xlen(f"{prefix}:log:requests") == 5, timeout=10)
        writers = {json.loads(f[b"r"])["gateway"] for _, f in r.xrange(f"{prefix}:log:requests")}
        assert len(writers) == 2 and {w.rsplit(":", 1)[1] for w in writers} == {
            str(a.proc.pid), str(b.proc.pid)}
        # stats: this process's own lifetime counters, and the fleet's today
        assert wait_for(lambda: stats(a).get("fleet", {}).get("keys", {}).get("f1", {})
                        .get("requests") == 5, timeout=10)
        assert next(k for k in stats(a)["keys"] if k["name"] == "f1")["requests"] == 3

        # the web UI on host A's config (its state_dir holds host A's rows only)
        from webui import create_app
        app = create_app(a.config, gateway_url=f"http://127.0.0.1:{a.port}", test_config={
            "TESTING": True, "KEYMUX_ENVIRON": {"KEYMUX_ADMIN_TOKEN": ADMIN}})
        client = app.test_client()
        page = client.get("/login").get_data(as_text=True)
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)[1]
        assert client.post("/login", data={"secret": ADMIN, "csrf_token": csrf}).status_code == 302
        log = client.get("/requests/").get_data(as_text=True)
        assert "5 requests" in log
        for w in writers:
            assert w in log
        export = client.get("/requests/export.jsonl").get_data(as_text=True).splitlines()
        by_writer = Counter(json.loads(x)["gateway"] for x in export)
        assert set(by_writer) == writers and sorted(by_writer.values()) == [2, 3]

        # Redis away: requests still served and kept in SQLite; health and metrics say so;
        # the rows reach the stream once Redis is back (it restarts empty: no persistence)
        redis_server.stop()
        assert chat(a) == 200
        assert wait_for(lambda: health(a).get("fleet_log", {}).get("ok") is False, timeout=10)
        assert health(a)["status"] == "degraded"
        assert "keymux_fleet_log_up 0.0" in get(a, "/metrics")[1].decode()
        assert wait_for(lambda: "Redis is unreachable" in client.get("/requests/").get_data(
            as_text=True), timeout=5)  # the UI's copy refreshes at most once a second
        redis_server.start()
        assert wait_for(lambda: health(a).get("fleet_log", {}).get("ok") is True, timeout=15)
        r = redis.Redis.from_url(redis_server.url)
        assert wait_for(lambda: r.xlen(f"{prefix}:log:requests") == 1, timeout=10)
        assert health(a)["fleet_log"]["dropped_rows"] == 0
