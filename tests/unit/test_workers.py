"""keypool.workers: the fleet's supervision with real short-lived processes, and its pure parts."""
import os
import signal
import sys
import time

from keypool import workers
from keypool.workers import Fleet, haproxy_config, local_redis, state_backend

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def wait(cond, deadline_s=10.0):
    deadline = time.monotonic() + deadline_s
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_dead_worker_is_restarted_in_its_slot_and_stop_ends_all(capsys):
    fleet = Fleet(SLEEPER, 2, dict(os.environ))
    fleet.start()
    try:
        first, second = fleet.pids()
        os.kill(first, signal.SIGKILL)
        wait(lambda: fleet.workers[0].proc.poll() is not None)
        assert fleet.check() is None
        wait(lambda: fleet.check() is None and len(fleet.pids()) == 2)  # after its 1 s pause
        assert fleet.workers[0].restarts == 1 and fleet.pids()[1] == second
        assert first not in fleet.pids()
        err = capsys.readouterr().err
        assert f"worker 1 (pid {first}) exited with code -9; restarting in 1 s" in err
        assert "worker 1 restarted (pid" in err
    finally:
        procs = [w.proc for w in fleet.workers]
        fleet.stop()
    assert all(p.poll() is not None for p in procs) and fleet.pids() == []


def test_a_worker_that_keeps_dying_at_start_stops_the_fleet(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(workers, "MAX_QUICK", 1)
    fleet = Fleet([sys.executable, "-c", "raise SystemExit(3)"], 2, dict(os.environ),
                  clock=lambda: now[0])
    fleet.start()
    for w in fleet.workers:
        w.proc.wait(10)
    assert fleet.check() is None       # first quick death: restarted after 1 s
    now[0] += 1.0
    assert fleet.check() is None
    fleet.workers[0].proc.wait(10)
    assert fleet.check() == 3           # second in a row: give up with its code
    fleet.stop()


def test_the_state_section_is_read_from_the_yaml_when_the_config_does_not_know_it(tmp_path):
    cfg = tmp_path / "keys.yaml"
    cfg.write_text("state: {backend: redis, url: 'redis://127.0.0.1:6390/0'}\nkeys: []\n")
    assert state_backend(cfg, object())["backend"] == "redis"
    cfg.write_text("keys: []\n")
    assert state_backend(cfg, object()) == {}
    import types  # a config that knows the section, as an object or a mapping
    parsed = types.SimpleNamespace(state=types.SimpleNamespace(backend="redis", url="redis://x"))
    assert state_backend(cfg, parsed) == {"backend": "redis", "url": "redis://x"}
    assert state_backend(cfg, types.SimpleNamespace(state={"backend": "sqlite"})) == {
        "backend": "sqlite"}


def test_only_a_loopback_redis_is_local():
    assert local_redis("redis://127.0.0.1:6390/0") == ("127.0.0.1", 6390)
    assert local_redis("redis://localhost/0") == ("localhost", 6379)
    assert local_redis("redis://redis.internal:6379/0") is None
    assert local_redis(None) is None


def test_the_haproxy_config_checks_health_and_balances_by_connections():
    text = haproxy_config("127.0.0.1", 8080, [8081, "10.0.0.2:8080"])
    assert "bind 127.0.0.1:8080" in text and "balance leastconn" in text
    assert "server w1 127.0.0.1:8081 check" in text and "server w2 10.0.0.2:8080 check" in text
    assert "uri /health" in text and "option redispatch" in text


def test_a_local_redis_nobody_serves_is_started_and_stopped(tmp_path, monkeypatch):
    import shutil
    import socket
    import types

    import pytest

    from keypool import config as config_module
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = types.SimpleNamespace(backend="redis", url=f"redis://127.0.0.1:{port}/0")
    fake = types.SimpleNamespace(state=state, state_dir=tmp_path / "state")
    monkeypatch.setattr(config_module, "load_config", lambda path: fake)
    args = types.SimpleNamespace(config=str(tmp_path / "keys.yaml"))
    proc, refused = workers.ensure_redis(args)
    try:
        assert refused is None and proc is not None
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert workers.ensure_redis(args) == (None, None)  # it runs now: left alone
    finally:
        workers.stop_pid(proc)
    assert proc.poll() is not None
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert workers.ensure_redis(args) == (None, 2)  # says how instead


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path):
    """keymux run killed by SIGKILL (no handler runs): the kernel ends its workers."""
    import subprocess
    parent = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\n"
         "from keypool.workers import Fleet\n"
         f"f = Fleet({SLEEPER!r}, 2, dict(os.environ)); f.start()\n"
         "print(*f.pids(), flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        parent.kill()
        parent.wait(5)

    def gone(pid):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] == "Z"
    wait(lambda: all(gone(p) for p in pids))
