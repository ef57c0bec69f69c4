"""`keymux run --workers N`: N gateway processes on one port (SO_REUSEPORT), supervised;
and the scaling guide's HAProxy example in front of two gateways (docs/scaling.md)."""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keypool.workers import haproxy_config

from .conftest import K2, pool_yaml
from .harness import GatewayProcess, free_port

KEYMUX = Path(sys.executable).with_name("keymux")
ENV = {k: v for k, v in os.environ.items()
       if k not in ("KEYMUX_ADMIN_TOKEN", "KEYMUX_SIDECAR_TOKEN")} | {"MOCK_KEY_2": K2}
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def call(port: int, method: str = "GET", path: str = "/_keymux/stats") -> tuple[int, dict]:
    """One request on a fresh connection (the kernel or the balancer picks per connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=CHAT if method == "POST" else None,
                     headers={"content-type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def until(what, deadline_s: float = 30):
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            value = what()
            if value:
                return value
        except OSError:
            pass
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def answering_pids(port: int, want: set[int], tries: int = 200) -> set[int]:
    """Workers seen answering stats, until ``want`` are all seen (bounded tries)."""
    seen = set()
    for _ in range(tries):
        status, body = call(port)
        assert status == 200
        seen.add(body["worker"]["pid"])
        if want <= seen:
            break
    return seen


def children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_without_shared_state_are_refused(tmp_path, mock):
    cfg = tmp_path / "keys.yaml"
    cfg.write_text(pool_yaml(mock.base_url))
    r = subprocess.run([str(KEYMUX), "run", "--config", str(cfg), "--workers", "2",
                        "--port", str(free_port()), "--no-ui"],
                       capture_output=True, text=True, timeout=30, env=ENV)
    assert r.returncode == 2 and "gateway on" not in r.stdout
    assert "--workers 2 needs shared state" in r.stderr
    assert "backend: redis" in r.stderr and "--unshared-state" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([str(KEYMUX), "run", "--config", str(cfg), "--workers", "2", "--web",
                        "--unshared-state", "--port", str(free_port()), "--no-ui"],
                       capture_output=True, text=True, timeout=30, env=ENV)
    assert r.returncode == 2 and "--web runs one mitmweb process" in r.stderr


def test_two_workers_share_the_port_restart_and_stop(tmp_path, mock, confdir):
    cfg = tmp_path / "keys.yaml"
    cfg.write_text(pool_yaml(mock.base_url))
    port, ui_port = free_port(), free_port()
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(KEYMUX), "run", "--config", str(cfg), "--workers", "2", "--unshared-state",
             "--port", str(port), "--ui-port", str(ui_port), "--", "--set", f"confdir={confdir}",
             "--set", "keymux_model_list_ttl=0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=ENV)
    try:
        text = until(lambda: re.search(r"pids (\d+) (\d+)", log_path.read_text()))
        first, second = int(text[1]), int(text[2])
        assert "WITHOUT SHARED STATE" in log_path.read_text()
        until(lambda: call(port, path="/health")[0] == 200)
        # both workers answer through the one port, and both serve completions
        until(lambda: answering_pids(port, {first, second}) == {first, second})
        assert all(call(port, "POST", "/v1/chat/completions")[0] == 200 for _ in range(10))
        assert mock.count() == 10

        os.kill(first, signal.SIGKILL)  # a crash
        until(lambda: not alive(first))
        # The other worker serves meanwhile. A connection the kernel had already queued on
        # the dead worker's socket is reset (SO_REUSEPORT, docs/scaling.md): a client retries
        # it once, as the SDKs do, and then gets its answer.
        for _ in range(10):
            try:
                status = call(port, "POST", "/v1/chat/completions")[0]
            except (ConnectionResetError, http.client.RemoteDisconnected):
                status = call(port, "POST", "/v1/chat/completions")[0]
            assert status == 200
        restarted = int(until(lambda: re.search(r"worker 1 restarted \(pid (\d+)",
                                                log_path.read_text()))[1])
        assert "worker 1 (pid %d) exited with code -9; restarting" % first in log_path.read_text()
        # the restarted worker answers once it has loaded keymux (a moment after the log line)
        until(lambda: answering_pids(port, {restarted, second}) == {restarted, second})
        # both write the one SQLite store (request log, usage) without locking each other out
        for _ in range(20):
            status, health = call(port, path="/_keymux/health")
            assert status == 200 and health["status"] == "ok", health

        family = children(proc.pid)  # the workers and the UI
        assert {restarted, second} < family
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0
        until(lambda: not any(alive(p) for p in family), 15)  # no orphan
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = log_path.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text


@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="redis-server is not installed (apt-get install redis-server; .ci/run does)")
def test_two_workers_on_a_redis_that_keymux_run_starts(tmp_path, mock, confdir):
    """The intended set-up: workers share one pool through a local Redis; nobody serves it,
    so `keymux run` starts it, and every worker reports it connected."""
    redis_port = free_port()
    cfg = tmp_path / "keys.yaml"
    cfg.write_text(pool_yaml(mock.base_url, f"""
state:
  backend: redis
  url: redis://127.0.0.1:{redis_port}/0
  prefix: kmxtest
"""))
    port, ui_port = free_port(), free_port()
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(KEYMUX), "run", "--config", str(cfg), "--workers", "2", "--port", str(port),
             "--ui-port", str(ui_port), "--", "--set", f"confdir={confdir}",
             "--set", "keymux_model_list_ttl=0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=ENV)
    try:
        text = until(lambda: re.search(r"pids (\d+) (\d+)", log_path.read_text()))
        pids = {int(text[1]), int(text[2])}
        assert f"started redis-server on 127.0.0.1:{redis_port}" in log_path.read_text()
        until(lambda: call(port, path="/health")[0] == 200)
        until(lambda: answering_pids(port, pids) == pids)

        def shared_ok() -> bool:  # connected to the one Redis, whichever worker answers
            return all(call(port, path="/_keymux/health")[1].get("shared_state", {}).get("ok")
                       for _ in range(20))
        until(shared_ok)
        assert all(call(port, "POST", "/v1/chat/completions")[0] == 200 for _ in range(6))
        family = children(proc.pid)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0
        until(lambda: not any(alive(p) for p in family), 15)  # workers, UI and Redis gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.skipif(shutil.which("haproxy") is None,
                    reason="haproxy is not installed (apt-get install haproxy; .ci/run does)")
def test_haproxy_in_front_of_two_gateways(tmp_path, mock, confdir):
    """docs/scaling.md's example: M gateways behind one balancer, a dead one skipped."""
    extra = "server:\n  allowed_hosts: [127.0.0.1]   # the name clients use, as the balancer's\n"
    front = free_port()
    a, b = (tmp_path / "a", tmp_path / "b")
    a.mkdir(), b.mkdir()
    with GatewayProcess(a, pool_yaml(mock.base_url, extra), env={"MOCK_KEY_2": K2},
                        confdir=confdir) as ga, \
            GatewayProcess(b, pool_yaml(mock.base_url, extra), env={"MOCK_KEY_2": K2},
                           confdir=confdir) as gb:
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(haproxy_config("127.0.0.1", front, [ga.port, gb.port]))
        with open(tmp_path / "haproxy.log", "wb") as log:
            lb = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            until(lambda: call(front, path="/health")[0] == 200)
            pids = {ga.proc.pid, gb.proc.pid}
            assert answering_pids(front, pids) == pids
            assert all(call(front, "POST", "/v1/chat/completions")[0] == 200 for _ in range(6))
            ga.kill9()
            # a connection refused by the dead one is re-dispatched; the check marks it down
            for _ in range(10):
                assert call(front, "POST", "/v1/chat/completions")[0] == 200
            assert answering_pids(front, {gb.proc.pid}, tries=5) == {gb.proc.pid}
        finally:
            lb.terminate()
            lb.wait(10)
