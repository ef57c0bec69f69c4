"""state: {backend: redis}: the UI reads the fleet's request log, usage and audit log from
Redis (webui/fleet.py), with the writer column; Redis away: this host's SQLite, and a note."""
from __future__ import annotations

import json
import time

import pytest
import redis

from uihelpers import CONFIG

from keypool.store import Batch, SQLiteStore
from keypool.store.fleetlog import FleetLog, names
from tests.redisserver import RedisServer, needs_redis

pytestmark = needs_redis


@pytest.fixture
def server():
    with RedisServer() as s:
        yield s


@pytest.fixture
def config_path(tmp_path, server):
    path = tmp_path / "keys.yaml"
    path.write_text(CONFIG + f"\nstate:\n  backend: redis\n  url: {server.url}\n"
                    "  prefix: ui\n  audit_max: 500\n")
    return path


def row(ts, gateway, client="app", status=200, key="openai-1"):
    return {"ts": ts, "client": client, "key": key, "provider": "openai", "model": "gpt-4o",
            "status": status, "attempts": [{"key": key, "status": status}], "latency_s": 0.2,
            "tokens_in": 5, "tokens_out": 7, "stream": 0, "gateway": gateway}


def mirror(server, rows, gateway, usage=None):
    log = FleetLog(redis.Redis.from_url(server.url), "ui", 1000, gateway)
    log.submit(Batch(rows, usage or {}))
    assert log.flush()
    log.close()


def test_request_log_shows_every_gateway(server, config_path, client, signed_in):
    now = time.time()
    local = SQLiteStore(config_path.parent / "state" / "keymux.db")
    local.write(Batch([row(now - 5, "hostA:11")]))
    local.close()
    mirror(server, [row(now - 5, "hostA:11")], "hostA:11")
    mirror(server, [row(now - 3, "hostB/w2:22", status=429)], "hostB/w2:22")
    page = client.get("/requests/").get_data(as_text=True)
    assert "hostA:11" in page and "hostB/w2:22" in page
    assert "Gateway" in page and "Every gateway process of the fleet" in page
    assert "2 requests" in page
    export = client.get("/requests/export.jsonl").get_data(as_text=True)
    assert len(export.strip().splitlines()) == 2
    usage = client.get("/usage/").get_data(as_text=True)
    assert "Every gateway process of the fleet" in usage
    # Redis away: this host's own rows (one), and a visible note
    server.stop()
    time.sleep(1.05)  # the copy refreshes at most once a second
    page = client.get("/requests/").get_data(as_text=True)
    assert "Redis is unreachable" in page
    assert "hostA:11" in page and "hostB/w2:22" not in page


def test_usage_page_counts_the_fleet(server, client, signed_in):
    now = time.time()
    minute = int(now // 60)
    mirror(server, [row(now - 5, "a:1"), row(now - 4, "a:1", status=500)], "a:1",
           {("openai-1", minute): {"provider": "openai", "requests": 2, "tokens_in": 10}})
    mirror(server, [row(now - 3, "b:2", client=None, status=401)], "b:2",
           {("openai-1", minute): {"provider": "openai", "requests": 1, "tokens_in": 5}})
    page = client.get("/usage/").get_data(as_text=True)
    assert 'data-client="app"' in page
    history = client.get("/api/history?range=hour&key=openai-1").get_json()
    assert sum(history["series"]["openai-1"]["rpm"]) == 3
    assert client.get("/api/stats").status_code == 200  # the dashboard's totals, same copy
    health = client.get("/keys/openai-1/health")
    assert health.status_code == 200


def test_audit_log_is_the_fleets(server, app, client, signed_in):
    r = redis.Redis.from_url(server.url)
    other = {"ts": time.time() - 1, "action": "key.added", "target": "from-host-b",
             "detail": "added on the other host", "session": "x", "address": "10.0.0.2",
             "writer": "hostB:9"}
    r.xadd(names("ui")["audit"], {"r": json.dumps(other)})
    with app.test_request_context():
        from webui import audit
        audit.log().write("cooldown.reset", "openai-1", "reset here", "s", "127.0.0.1", 14)
    page = client.get("/audit/").get_data(as_text=True)
    assert "from-host-b" in page and "reset here" in page
    assert r.xlen(names("ui")["audit"]) == 2
    # the local audit.db has only this host's row
    import sqlite3
    db = sqlite3.connect(app.extensions["keymux"].config.path.parent / "state" / "audit.db")
    assert [t for (t,) in db.execute("SELECT target FROM audit")] == ["openai-1"]


def test_spend_and_key_state_stay_local(server, app, config_path):
    from webui.fleet import FleetStore
    local = SQLiteStore(config_path.parent / "state" / "keymux.db")
    local.write(Batch(spend={("2026-11-30", "openai-1", "app", "openai", "gpt-4o"): {
        "usd": 1.5, "requests": 4}}))
    local.close()
    with app.test_request_context():
        from webui import deps
        store = deps.store()
        assert isinstance(store, FleetStore)
        assert store.query("SELECT SUM(requests) FROM spend_day") == [(4,)]
        assert store.query("SELECT COUNT(*) FROM requests") == [(0,)]  # the fleet's: none yet
        assert "gateway" in {r[1] for r in store.query("PRAGMA table_info(requests)")}


def test_the_copy_follows_the_stream_and_its_cap(server, app, client, signed_in):
    import re
    now = time.time()
    log = FleetLog(redis.Redis.from_url(server.url), "ui", 100, "h:1")
    log.submit(Batch([row(now - 60, "h:1") for _ in range(50)]))
    assert log.flush()

    def total():
        page = client.get("/requests/?range=1h").get_data(as_text=True)
        return int(re.search(r"(\d+) requests", page)[1])
    assert total() == 50
    for _ in range(5):  # past the cap: Redis trims the oldest, and so does the copy
        log.submit(Batch([row(now - 30, "h:1") for _ in range(100)]))
    assert log.flush()
    r = redis.Redis.from_url(server.url)
    kept = r.xlen(names("ui")["requests"])
    assert kept < 550
    deadline = time.monotonic() + 5
    while total() != kept and time.monotonic() < deadline:
        time.sleep(0.1)  # at most one refresh a second
    assert total() == kept
    log.close()
