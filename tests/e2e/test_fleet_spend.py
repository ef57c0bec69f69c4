"""Two real gateway processes on one redis-server, each with its own state_dir (as two
hosts): /_keymux/stats' ``spend`` of either is both processes', so is the web UI's spend
and `keymux report --fleet`; a restarted process goes on from its own total (its SQLite
rows are not counted twice)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redisserver import RedisServer, needs_redis

from .harness import GatewayProcess, stats, wait_for

pytestmark = needs_redis

K1 = "sk-fleet-spend-key-000001"
APP = "kmx-fleet-spend-app-token-1"
ADMIN = "fleet-spend-admin-token-001"
KEYMUX = Path(sys.executable).with_name("keymux")


def yaml(mock_url: str, redis_url: str, prefix: str) -> str:
    return f"""
version: 1
state: {{backend: redis, url: "{redis_url}", prefix: {prefix}}}
providers:
  pfs: {{base_url: "{mock_url}/v1", models: ["fs-*"], price: {{"fs-*": {{input: 1000, output: 2000}}}}}}
clients:
  - {{name: app, token: {APP}}}
keys:
  - {{name: s1, provider: pfs, key: {K1}}}
routing: {{daily_reset: "00:00", timezone: "UTC"}}
"""


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


def chat(gw) -> float:
    """One priced request; what it cost (USD)."""
    import openai
    oa = openai.OpenAI(base_url=gw.url + "/v1", api_key=APP, max_retries=0, timeout=20)
    r = oa.chat.completions.create(model="fs-1", messages=[{"role": "user", "content": "hi"}])
    return (r.usage.prompt_tokens * 1000 + r.usage.completion_tokens * 2000) / 1e6




def spent(gw) -> tuple[float, int]:
    t = stats(gw)["spend"]["today"]["by_key"].get("s1") or {"usd": 0.0, "requests": 0}
    return t["usd"], t["requests"]


def test_stats_ui_and_report_show_both_processes_spend(mock, redis_server, tmp_path_factory,
                                                       confdir):
    prefix = f"fs{os.getpid()}"
    text = yaml(mock.base_url, redis_server.url, prefix)
    dir_a, dir_b = tmp_path_factory.mktemp("hosta"), tmp_path_factory.mktemp("hostb")
    with GatewayProcess(dir_a, text, confdir=confdir) as a, \
            GatewayProcess(dir_b, text, confdir=confdir) as b:
        cost = sum(chat(a) for _ in range(3)) + sum(chat(b) for _ in range(2))
        assert cost > 0
        # each process's stats: the fleet's (read back every 2 s), its own live at once
        for g in (a, b):
            assert wait_for(lambda: spent(g)[1] == 5, timeout=15), stats(g)["spend"]
            assert spent(g)[0] == pytest.approx(cost)
            assert stats(g)["spend"]["fleet"] is True
            key = next(k for k in stats(g)["keys"] if k["name"] == "s1")
            assert key["spend_today_usd"] == pytest.approx(cost)
        # the web UI on host A's config: the usage page's spend table is the fleet's
        from webui import create_app
        app = create_app(a.config, gateway_url=f"http://127.0.0.1:{a.port}", test_config={
            "TESTING": True, "KEYMUX_ENVIRON": {"KEYMUX_ADMIN_TOKEN": ADMIN}})
        client = app.test_client()
        page = client.get("/login").get_data(as_text=True)
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)[1]
        assert client.post("/login", data={"secret": ADMIN, "csrf_token": csrf}).status_code == 302
        chart = client.get("/api/spend/daily?by=key").get_json()
        assert chart["total"] == pytest.approx(cost)
        page = client.get("/usage/?period=today&by=key").get_data(as_text=True)
        assert re.search(r">\s*5\s*<", page)  # both processes' requests in one row
        # keymux report --fleet: both; without: this host's store only
        env = {**os.environ, "PYTHONPATH": ""}
        out = subprocess.run([str(KEYMUX), "report", "--fleet", "--json", "--since", "1d",
                              "--config", str(a.config)], capture_output=True, text=True,
                             timeout=30, env=env)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["total"]["requests"] == 5
        local = subprocess.run([str(KEYMUX), "report", "--json", "--since", "1d", "--config",
                                str(a.config)], capture_output=True, text=True, timeout=30,
                               env=env)
        assert json.loads(local.stdout)["total"]["requests"] == 3
    # host A again (same state_dir): it restores its 3 requests from SQLite and goes on from
    # its own total in Redis: the fleet still counts 5, then 6
    with GatewayProcess(dir_a, text, confdir=confdir) as a2:
        assert wait_for(lambda: stats(a2)["spend"]["fleet"] is True, timeout=15)
        assert spent(a2)[1] == 5
        cost += chat(a2)
        assert spent(a2) == (pytest.approx(cost), 6)
        assert wait_for(lambda: subprocess.run(
            [str(KEYMUX), "report", "--fleet", "--json", "--config", str(a2.config)],
            capture_output=True, text=True, timeout=30).stdout.count('"requests": 6') >= 1,
            timeout=10)
