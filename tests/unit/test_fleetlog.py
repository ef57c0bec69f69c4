"""keypool.store.fleetlog against a real redis-server: rows and usage mirrored in one
pipeline, the stream capped, the fleet's day totals read back, and Redis away: bounded,
counted, never blocking, recovered."""
import json
import time

import pytest
import redis

from keypool.store import Batch
from keypool.store.fleetlog import CLIENT_BUCKET_S, FleetLog, client_sums, names

from tests.redisserver import RedisServer, needs_redis

pytestmark = needs_redis


@pytest.fixture(scope="module")
def server():
    with RedisServer() as s:
        yield s


def row(ts, client="app", key="k1", status=200, **kw):
    return {"ts": ts, "client": client, "key": key, "provider": "openai", "model": "gpt-4o",
            "status": status, "attempts": [{"key": key, "status": status}], "latency_s": 0.5,
            "tokens_in": 3, "tokens_out": 4, "stream": 0, **kw}


def until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_rows_usage_and_fleet_totals(server, monkeypatch):
    import keypool.store.fleetlog as fl
    monkeypatch.setattr(fl, "FLEET_READ_EVERY_S", 0.0)  # read the day totals at every write
    r = redis.Redis.from_url(server.url)
    log = FleetLog(redis.Redis.from_url(server.url), "t1", 1000, "hostA:42")
    now = time.time()
    minute = int(now // 60)
    usage = {("k1", minute): {"provider": "openai", "requests": 2, "successes": 1,
                              "rate_limited": 1, "tokens_in": 6, "tokens_out": 8,
                              "latency_sum": 1.25}}
    log.submit(Batch([row(now), row(now, client=None, status=429)], usage))
    assert log.flush()
    k = names("t1")
    entries = r.xrange(k["requests"])
    got = [json.loads(fields[b"r"]) for _, fields in entries]
    assert [g["status"] for g in got] == [200, 429]
    assert all(g["gateway"] == "hostA:42" for g in got)
    h = r.hgetall(f"{k['key']}{minute // 60}")
    assert h[f"{minute}|k1|requests".encode()] == b"2"
    assert float(h[f"{minute}|k1|latency_sum".encode()]) == 1.25
    assert h[f"{minute}|k1|provider".encode()] == b"openai"
    assert 0 < r.ttl(f"{k['key']}{minute // 60}") <= 26 * 3600
    bucket = int(now // CLIENT_BUCKET_S)
    c = r.hgetall(f"{k['client']}{bucket * CLIENT_BUCKET_S // 3600}")
    assert c[f"{bucket}|app|ok".encode()] == b"1"
    assert c[f"{bucket}|-|client_errors".encode()] == b"1"
    # a second process adds to the same counters: the day totals are the fleet's
    other = FleetLog(redis.Redis.from_url(server.url), "t1", 1000, "hostB:7")
    other.submit(Batch([row(now)], {("k1", minute): {"provider": "openai", "requests": 1}}))
    assert other.flush()
    assert other.fleet["keys"]["k1"]["requests"] == 3  # both processes' attempts today
    assert other.fleet["keys"]["k1"]["latency_sum"] == 1.25
    assert log.status()["ok"] and log.status()["mirrored_rows"] == 2
    log.close()
    other.close()


def test_stream_is_capped(server):
    r = redis.Redis.from_url(server.url)
    log = FleetLog(redis.Redis.from_url(server.url), "t2", 100, "h:1")
    now = time.time()
    for _ in range(10):
        log.submit(Batch([row(now) for _ in range(100)]))
    assert log.flush()
    n = r.xlen(names("t2")["requests"])
    assert 100 <= n < 400  # MAXLEN ~: trimmed by whole macro nodes, never unbounded
    log.close()


def test_redis_away_drops_with_a_counter_and_recovers(monkeypatch):
    import keypool.store.fleetlog as fl
    monkeypatch.setattr(fl, "MAX_PENDING_ROWS", 50)
    server = RedisServer().start()
    try:
        log = FleetLog(redis.Redis.from_url(server.url, socket_timeout=0.5,
                                            socket_connect_timeout=0.5), "t3", 1000, "h:1")
        port = server.port
        server.stop()
        now = time.time()
        started = time.monotonic()
        for _ in range(3):
            log.submit(Batch([row(now) for _ in range(40)]))  # returns at once: no I/O
        assert time.monotonic() - started < 0.1
        assert log.flush(10)
        st = log.status()
        assert not st["ok"] and st["error"]
        assert st["pending_rows"] == 50 and st["dropped_rows"] == 70
        server = RedisServer(port).start()
        assert until(lambda: log.status()["ok"], 10)  # retried every second
        r = redis.Redis.from_url(server.url)
        assert r.xlen(names("t3")["requests"]) == 50
        assert log.status()["pending_rows"] == 0 and log.status()["dropped_rows"] == 70
        log.close()
    finally:
        server.stop()


def test_client_sums():
    sums = client_sums([row(1200.0), row(1201.0, status=502), row(1900.0, client=None)])
    assert sums[(2, "app")]["requests"] == 2 and sums[(2, "app")]["server_errors"] == 1
    assert sums[(3, "-")]["ok"] == 1


class _Down:
    fleet = {"day": "2026-11-30", "as_of": 1.0, "keys": {"k1": {"requests": 9}}}

    def status(self):
        return {"ok": False, "error": "ConnectionError: refused", "dropped_rows": 3}


def test_health_says_degraded_and_stats_show_the_fleet():
    from keypool import endpoints
    from keypool.gateway import Gateway
    from .helpers import config, key
    gw = Gateway(config(keys=[key("k1")]))
    body = json.loads(endpoints.readiness(gw).body)
    assert "fleet_log" not in body and "fleet" not in endpoints.stats(gw)  # the default
    gw.fleet_log = _Down()
    body = json.loads(endpoints.readiness(gw).body)
    assert body["status"] == "degraded" and body["fleet_log"]["dropped_rows"] == 3
    assert endpoints.stats(gw)["fleet"]["keys"]["k1"]["requests"] == 9


def test_metrics(server):
    from prometheus_client import CollectorRegistry, generate_latest
    from keypool.store.fleetlog import FleetLogCollector
    log = FleetLog(redis.Redis.from_url(server.url), "t4", 10, "h:1")
    registry = CollectorRegistry()
    registry.register(FleetLogCollector(log))
    text = generate_latest(registry).decode()
    assert "keymux_fleet_log_up 1.0" in text and "keymux_fleet_log_dropped_rows_total 0.0" in text
    log.close()


class _SlowRedis:
    """A Redis that takes 0.2 s per pipeline: what queues meanwhile is written as one."""

    def __init__(self):
        self.pipelines, self.rows = 0, 0

    def pipeline(self, transaction=False):
        outer = self

        class Pipe:
            def __init__(self):
                self.n = 0

            def xadd(self, *a, **kw):
                self.n += 1

            def __getattr__(self, name):
                return lambda *a, **kw: None

            def execute(self):
                time.sleep(0.2)
                outer.pipelines += 1
                outer.rows += self.n
        return Pipe()

    def hgetall(self, key):
        return {}


def test_a_slow_redis_gets_one_batch_not_a_queue():
    slow = _SlowRedis()
    log = FleetLog(slow, "t5", 1000, "h:1")
    for i in range(20):
        log.submit(Batch([row(time.time())], {("k1", 1): {"provider": "p", "requests": 1}}))
    assert log.flush(10)
    assert slow.rows == 20 and slow.pipelines <= 3
    log.close()
