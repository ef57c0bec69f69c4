"""`keymux run --workers 2` on one redis-server: a client's budget holds across the two
workers of one host (one state_dir, one SQLite store), and still holds after a worker is
restarted. Each worker pushes its own spend under its own origin (``ORIGIN/wN``), never
the store's restored history (keypool.spend, Ledger.set_base)."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import threading

import pytest
import redis

from tests.redisserver import RedisServer, needs_redis

from .test_workers import ENV, KEYMUX, alive, children, until

pytestmark = needs_redis

APP = "kmx-worker-budget-app-token1"
ADMIN = "kmx-worker-budget-admin-token-0001"
MAX_TOKENS = 5   # the mock answers 5 completion tokens: the estimate is the real cost
COST = 5.0       # USD: output priced at 1 USD a token, input free
CHAT = json.dumps({"model": "wb-1", "max_tokens": MAX_TOKENS,
                   "messages": [{"role": "user", "content": "hi"}]})


def yaml(mock_url: str, redis_url: str, prefix: str) -> str:
    return f"""
version: 1
state: {{backend: redis, url: "{redis_url}", prefix: {prefix}, reservation_ttl_s: 2}}
providers:
  pwb: {{base_url: "{mock_url}/v1", models: ["wb-*"], price: {{"wb-*": {{input: 0, output: 1000000}}}}}}
clients:
  - {{name: app, token: {APP}, budget: {{daily_usd: {4.5 * COST}}}}}
keys:
  - {{name: wb, provider: pwb, key: sk-worker-budget-key-00001}}
routing: {{daily_reset: "00:00", timezone: "UTC"}}
"""


class Conn:
    """A kept-alive connection: the kernel gave it to one worker, which answers all on it."""

    def __init__(self, port: int):
        import http.client
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        self.pid = self.get("/_keymux/stats")["worker"]["pid"]

    def get(self, path: str) -> dict:
        self.http.request("GET", path, headers={"x-keymux-admin-token": ADMIN})
        r = self.http.getresponse()
        assert r.status == 200, r.status
        return json.loads(r.read())

    def chat(self) -> tuple[int, str]:
        self.http.request("POST", "/v1/chat/completions", CHAT,
                          {"content-type": "application/json", "authorization": f"Bearer {APP}"})
        r = self.http.getresponse()
        data = json.loads(r.read() or b"{}")
        return r.status, (data.get("error") or {}).get("code", "")


def conns(port: int, pids: set[int], each: int = 2) -> dict[int, list[Conn]]:
    """``each`` connections on every worker in ``pids`` (bounded tries)."""
    out: dict[int, list[Conn]] = {p: [] for p in pids}
    for _ in range(200):
        c = Conn(port)
        if len(out[c.pid]) < each:
            out[c.pid].append(c)
        else:
            c.http.close()
        if all(len(v) == each for v in out.values()):
            return out
    raise AssertionError(f"never {each} connections on each worker: {out}")


def close(by_pid: dict[int, list[Conn]]) -> None:
    for cs in by_pid.values():
        for c in cs:
            c.http.close()


def burst(cs: list[Conn], each: int) -> list[tuple[int, str]]:
    """``each`` requests on every connection, the connections in parallel."""
    out: list = []
    lock = threading.Lock()

    def run(c):
        for _ in range(each):
            got = c.chat()
            with lock:
                out.append(got)
    ts = [threading.Thread(target=run, args=(c,)) for c in cs]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return out


def admin(port: int, path: str = "/_keymux/stats") -> dict:
    """An admin GET on a fresh connection (whichever worker the kernel picks answers)."""
    c = Conn.__new__(Conn)
    import http.client
    c.http = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return c.get(path)
    finally:
        c.http.close()


def answering(port: int, want: set[int]) -> bool:
    """Every worker in ``want`` seen answering stats (bounded tries)."""
    seen = set()
    for _ in range(200):
        seen.add(admin(port)["worker"]["pid"])
        if want <= seen:
            return True
    return False


def shared_ok(port: int) -> bool:
    return all(admin(port, "/_keymux/health").get("shared_state", {}).get("ok")
               for _ in range(20))


def served_by(r: redis.Redis, prefix: str) -> dict[str, int]:
    """Completions answered 200, per worker (``host/wN``), from the fleet's request log."""
    out: dict[str, int] = {}
    for _, fields in r.xrange(f"{prefix}:log:requests"):
        row = json.loads(fields[b"r"])
        if row.get("status") == 200:
            w = row["gateway"].rsplit(":", 1)[0]
            out[w] = out.get(w, 0) + 1
    return out


def stored_requests(db) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2) as c:
            return c.execute("SELECT COALESCE(SUM(requests), 0) FROM spend_day").fetchone()[0]
    except sqlite3.Error:
        return -1


def test_a_client_budget_holds_across_two_workers_and_a_restart(tmp_path, mock, confdir):
    prefix = f"wb{os.getpid()}"
    with RedisServer() as server:
        cfg = tmp_path / "keys.yaml"
        cfg.write_text(yaml(mock.base_url, server.url, prefix))
        port, ui_port = free_ports(2)
        log_path = tmp_path / "run.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(KEYMUX), "run", "--config", str(cfg), "--workers", "2", "--port", str(port),
                 "--ui-port", str(ui_port), "--", "--set", f"confdir={confdir}",
                 "--set", "keymux_model_list_ttl=0"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**ENV, "KEYMUX_ADMIN_TOKEN": ADMIN})
        r = redis.Redis.from_url(server.url)
        try:
            text = until(lambda: re.search(r"pids (\d+) (\d+)", log_path.read_text()))
            pids = {int(text[1]), int(text[2])}
            until(lambda: answering(port, pids))
            until(lambda: shared_ok(port))

            by_pid = conns(port, pids, 3)
            first = [c.chat() for cs in by_pid.values() for c in cs[:1]]  # one on each
            # then 18 more: 3 connections on each worker, 3 requests on each, in parallel
            got = first + burst([c for cs in by_pid.values() for c in cs], 3)
            # 4 requests' cost < 4.5 admits a 5th, not a 6th, whichever worker asks
            assert first == [(200, "")] * 2
            assert got.count((200, "")) == 5, got
            assert got.count((429, "budget_exceeded")) == 15, got
            assert mock.count() == 5
            # both workers served (the fleet's log names each request's worker)
            by = until(lambda: (lambda b: b if sum(b.values()) == 5 else None)(
                served_by(r, prefix)), 15)
            assert len(by) == 2, by
            close(by_pid)
            # each worker's own total in Redis, under its own origin: together, the 5
            totals = r.hgetall(f"{prefix}:cspent:{stats_day(port)}:app")
            assert len(totals) == 2 and all(b"/w" in k for k in totals), totals
            assert sum(float(v.split()[0]) for v in totals.values()) == pytest.approx(5 * COST)

            # a worker restarted (a crash) once the store holds the 5: it restores them
            # from SQLite and goes on from its own total in Redis: the budget still holds
            until(lambda: stored_requests(tmp_path / "state" / "keymux.db") == 5, 15)
            victim = min(pids)
            os.kill(victim, signal.SIGKILL)
            until(lambda: not alive(victim))
            restarted = int(until(lambda: re.search(r"worker \d+ restarted \(pid (\d+)",
                                                    log_path.read_text()))[1])
            live = (pids - {victim}) | {restarted}
            until(lambda: answering(port, live))
            until(lambda: shared_ok(port))
            by_pid = conns(port, live, 2)
            again = burst([c for cs in by_pid.values() for c in cs], 3)
            assert again == [(429, "budget_exceeded")] * 12, again
            close(by_pid)  # before the workers stop: none is cut off mid keep-alive
            assert mock.count() == 5
            totals = r.hgetall(f"{prefix}:cspent:{stats_day(port)}:app")
            assert sum(float(v.split()[0]) for v in totals.values()) == pytest.approx(5 * COST)
            family = children(proc.pid)
            os.kill(proc.pid, signal.SIGINT)
            assert proc.wait(30) == 0
            until(lambda: not any(alive(p) for p in family), 15)
        finally:
            r.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert "Traceback" not in log_path.read_text()


def stats_day(port: int) -> str:
    return admin(port)["spend"]["day"]


def free_ports(n: int) -> list[int]:
    from .harness import free_port
    return [free_port() for _ in range(n)]
