"""What the benchmarks share: ports, start, wait until up, stop by PID; the commands they
start (mitmdump, keymux, two workers), CPU over a process tree, a Redis, the event loop."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 30, data: bytes | None = None,
            headers: dict | None = None) -> None:
    """Until ``url`` answers (``data``: POST it), or ``proc`` dies, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, data=data, headers=headers or {})
            urllib.request.urlopen(req, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGINT each process we started (mitmdump shuts down cleanly), then wait or kill."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


# -- what the benchmarks start: the same commands everywhere, so rows stay comparable --

def write_keys(path: Path, mock_port: int, *, rpm: int | None = None, state: str = "",
               n: int = 4) -> Path:
    """keymux's config for the mock: ``n`` keys (with ``rpm``: every attempt takes a shared
    slot when the state is Redis); ``state``: a Redis URL, the prefix is the file's stem."""
    limit = f", rpm: {rpm}" if rpm else ""
    keys = "\n".join(f"  - {{name: bench-{i}, provider: mock, key: sk-bench-key-{i:012d}{limit}}}"
                     for i in range(n))
    text = (f"providers:\n  mock:\n    base_url: http://127.0.0.1:{mock_port}/v1\n"
            f"keys:\n{keys}\nstate_dir: {path.stem}-state\n")  # one store per target
    if state:
        text += f"state: {{backend: redis, url: {state}, prefix: {path.stem}}}\n"
    path.write_text(text)
    return path


def mitmdump(python: str, tmp: Path, mock_port: int) -> list[str]:
    """Plain mitmdump in reverse mode to the mock, quiet, its certificates in ``tmp``."""
    return [str(Path(python).parent / "mitmdump"), "--listen-host", "127.0.0.1", "-q",
            "--mode", f"reverse:http://127.0.0.1:{mock_port}", "--set", f"confdir={tmp}"]


def planned(mitm: list[str]) -> list[str]:
    """Plain mitmdump with keymux's planned hook dispatch only (scripts/planned_hooks.py)."""
    return mitm + ["-s", str(ROOT / "scripts" / "planned_hooks.py")]


def keymux(mitm: list[str], config: Path, addons: Path = ROOT / "addons") -> list[str]:
    return mitm + ["-s", str(addons / "keymux.py"), "--set", f"keymux_config={config}"]


# Starts the command twice; SIGINT/SIGTERM stop both with benchlib.stop (argv[1]: scripts/).
_TWO = """
import signal, subprocess, sys
sys.path.insert(0, sys.argv[1])
from benchlib import stop
procs = [subprocess.Popen(sys.argv[2:]) for _ in range(2)]
def end(*_):
    stop(procs)
    sys.exit(0)
signal.signal(signal.SIGINT, end)
signal.signal(signal.SIGTERM, end)
for p in procs:
    p.wait()
"""


def two_workers(python: str, cmd: list[str]) -> list[str]:
    """Two copies of a mitmdump command (``cmd[0]`` is mitmdump) on one port, with
    SO_REUSEPORT, as ``keymux run --workers 2`` starts them; one launcher process whose
    tree (cpu_tree) holds both workers."""
    return [python, "-c", _TWO, str(ROOT / "scripts"), python, "-m", "keypool.mitm.reuseport",
            *cmd[1:]]


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_tree(pid: int) -> float:
    """utime + stime seconds of ``pid`` and its descendants (children found through /proc)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def redis_server():
    """tests/redisserver.py's RedisServer (a context manager: a free loopback port, stopped
    by PID), or None without Debian's redis-server."""
    import sys
    sys.path.insert(0, str(ROOT))
    from tests.redisserver import REDIS_SERVER, RedisServer
    return RedisServer() if REDIS_SERVER else None


def loop_factory():
    """uvloop's event loop when it is installed (the harness then costs about half the CPU:
    scripts/bench_streams.py's clients and mock), else None: asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
