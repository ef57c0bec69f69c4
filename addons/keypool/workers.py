"""``keymux run --workers N``: N gateway processes behind one port, supervised.

Each worker is the ordinary ``mitmdump -s addons/keymux.py`` command, with its own core.
They share the port the user named through SO_REUSEPORT (each runs mitmdump through
``python -m keypool.mitm.reuseport``): the kernel hands each new connection to one of them, and
each worker binds exactly the address the user asked for, so the gateway's own
protections (open-bind refusal, Host checks, the admin token beyond loopback) see the
real bind. Why not HAProxy in front (measured, docs/scaling.md): it costs a process and a
hop per request and every worker would see only loopback peers. ``haproxy_config`` writes
the config the scaling guide and its test use for M hosts behind one balancer.

A worker that exits while the fleet is running is logged and started again (with a
growing pause if it keeps dying at start-up); stopping the fleet stops each process by
its PID, once. Pure of mitmproxy: only ``subprocess`` and signals.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

POLL_S = 0.2            # how often the supervisor looks at its children
QUICK_DEATH_S = 5.0     # a worker that dies sooner than this after its start ...
MAX_BACKOFF_S = 30.0    # ... is restarted after a pause doubling up to this
MAX_QUICK = 5           # ... and after this many in a row the fleet gives up
STOP_WAIT_S = 10.0      # SIGINT, then SIGKILL after this


def log(message: str) -> None:
    print(f"keymux: {message}", file=sys.stderr, flush=True)


@dataclass
class Worker:
    index: int                       # 1-based slot; a restarted worker keeps its slot
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    due: float = 0.0                 # when a dead worker may start again
    quick: int = 0                   # deaths in a row soon after start


@dataclass
class Fleet:
    """N copies of ``command`` on one port; ``env`` is shared, each gets its slot number."""
    command: list[str]
    count: int
    env: Mapping[str, str]
    clock: Callable[[], float] = time.monotonic
    workers: list[Worker] = field(default_factory=list)
    stopping: bool = False

    def start(self) -> None:
        self.workers = [Worker(i + 1) for i in range(self.count)]
        for w in self.workers:
            self._spawn(w)

    def _spawn(self, w: Worker) -> None:
        env = {**self.env, "KEYMUX_WORKER": str(w.index), "KEYMUX_WORKERS": str(self.count)}
        # Own session: a terminal's Ctrl-C reaches only `keymux run`, which stops each
        # worker exactly once (a second SIGINT makes mitmproxy exit 130 mid-shutdown).
        w.proc = subprocess.Popen(self.command, env=env, start_new_session=True,
                                  preexec_fn=die_with_parent)
        w.started = self.clock()

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.proc is not None and w.proc.poll() is None]

    def check(self) -> int | None:
        """Restart the dead; with one worker, its exit is the fleet's (as before --workers)."""
        now = self.clock()
        for w in self.workers:
            code = w.proc.poll() if w.proc is not None else None
            if w.proc is not None and code is not None:
                if self.count == 1:
                    return code
                self._buried(w, code, now)
                if w.quick > MAX_QUICK:
                    log(f"worker {w.index} keeps exiting at start-up; stopping (its log above)")
                    return code or 1
            if w.proc is None and not self.stopping and now >= w.due:
                w.restarts += 1
                self._spawn(w)
                log(f"worker {w.index} restarted (pid {w.proc.pid}, restart {w.restarts})")
        return None

    def _buried(self, w: Worker, code: int, now: float) -> None:
        quick = now - w.started < QUICK_DEATH_S
        w.quick = w.quick + 1 if quick else 0
        w.backoff = min(MAX_BACKOFF_S, max(1.0, w.backoff * 2)) if quick else 0.0
        w.due = now + w.backoff
        log(f"worker {w.index} (pid {w.proc.pid}) exited with code {code}; restarting"
            + (f" in {w.backoff:.0f} s" if w.backoff else ""))
        w.proc = None

    def stop(self) -> int:
        """SIGINT every live worker by PID, wait, SIGKILL what is left; the first exit code."""
        self.stopping = True
        procs = [w.proc for w in self.workers if w.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = self.clock() + STOP_WAIT_S
        for p in procs:
            try:
                p.wait(max(0.1, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return procs[0].returncode if procs else 0


def die_with_parent() -> None:
    """In the child, before exec (Linux): the kernel sends it SIGTERM when `keymux run` dies,
    even by SIGKILL, so no worker outlives its supervisor (PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stopping relies on keymux run's own handlers


# -- what is shared between workers -----------------------------------------------------

UNSHARED = ("--workers {n} needs shared state: each worker would keep its own cooldowns, "
            "rpm/tpm windows, in-flight counts, budgets and round-robin cursor, so a key's "
            "limits would be enforced N times over and a 429 seen by one worker would not "
            "cool the key for the others. Add `state: {{backend: redis, url: "
            "redis://127.0.0.1:6379/0}}` to {config} (docs/scaling.md), or pass "
            "--unshared-state to run them anyway.")


def state_backend(config_path: Path, config: object) -> dict:
    """The config's ``state:`` section ({} when absent): from the parsed config when it
    knows the section, else from the YAML itself."""
    state = getattr(config, "state", None)
    if isinstance(state, Mapping):
        return dict(state)
    if state is not None:
        return {"backend": getattr(state, "backend", None), "url": getattr(state, "url", None)}
    try:
        import yaml
        raw = yaml.safe_load(config_path.read_text()) or {}
    except (OSError, ValueError, ImportError):
        return {}
    section = raw.get("state") if isinstance(raw, dict) else None
    return section if isinstance(section, dict) else {}


def local_redis(url: str | None) -> tuple[str, int] | None:
    """(host, port) of a redis:// URL on this machine's loopback, else None."""
    from urllib.parse import urlsplit
    if not url:
        return None
    u = urlsplit(url)
    if u.scheme not in ("redis", "") or u.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    return u.hostname, u.port or 6379


def start_redis(host: str, port: int, state_dir: Path) -> subprocess.Popen | None:
    """A ``redis-server`` for a local URL nobody serves, its files in state_dir; None if
    redis-server is not installed."""
    import shutil
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    state_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([exe, "--bind", host, "--port", str(port), "--dir", str(state_dir),
                             "--save", "60 1", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, start_new_session=True)


# -- HAProxy in front of M hosts (docs/scaling.md; tests/e2e/test_workers.py) ------------

def haproxy_config(bind_host: str, bind_port: int, servers: list[int] | list[str]) -> str:
    """A tcp-mode HAProxy config: least connections (streams are long), /health checks,
    a connection refused by a dead backend re-dispatched to another. ``servers``: ports on
    127.0.0.1 or ``host:port`` strings."""
    lines = "\n".join(
        f"    server w{i + 1} {s if isinstance(s, str) else f'127.0.0.1:{s}'} check"
        for i, s in enumerate(servers))
    return HAPROXY.format(bind=f"{bind_host}:{bind_port}", servers=lines)


HAPROXY = """\
global

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    retries 2
    option redispatch

frontend keymux
    bind {bind}
    default_backend gateways

backend gateways
    balance leastconn
    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
    default-server inter 1s fall 2 rise 1
{servers}
"""


# -- `keymux run --workers N` (keypool/cli.py) ------------------------------------------

def preflight(args, fail: Callable[[str], int]) -> int | None:
    """What --workers N needs beyond one gateway's checks; exit 2 with the reason, or None."""
    from .config import load_config
    if args.web:
        return fail("--web runs one mitmweb process (one flow list); use --workers 1 with it")
    state = state_backend(Path(args.config), load_config(args.config))
    if state.get("backend") == "redis":
        return None
    if not args.unshared_state:
        return fail(UNSHARED.format(n=args.workers, config=args.config))
    log(f"WARNING: {args.workers} WORKERS WITHOUT SHARED STATE (--unshared-state): each keeps "
        "its own cooldowns, rpm/tpm windows, in-flight counts and budgets; every key's limits "
        f"are enforced up to {args.workers} times over")
    return None


def ensure_redis(args) -> tuple[subprocess.Popen | None, int | None]:
    """The config's local Redis, started when nobody serves it: (process or None, exit)."""
    import socket
    from .config import load_config
    config = load_config(args.config)
    where = local_redis(state_backend(Path(args.config), config).get("url"))
    if where is None:
        return None, None
    try:
        socket.create_connection(where, timeout=1).close()
        return None, None
    except OSError:
        pass
    proc = start_redis(*where, Path(config.state_dir) / "redis")
    if proc is None:
        log(f"nothing serves Redis on {where[0]}:{where[1]} and redis-server is not installed: "
            f"apt-get install redis-server, or start it: redis-server --bind {where[0]} "
            f"--port {where[1]}")
        return None, 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(where, timeout=1).close()
            log(f"started redis-server on {where[0]}:{where[1]} (pid {proc.pid})")
            return proc, None
        except OSError:
            time.sleep(0.1)
    log(f"redis-server did not start on {where[0]}:{where[1]}")
    stop_pid(proc)
    return None, 2


def stop_pid(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def run_fleet(args, command: list[str], ui_command: list[str] | None,
              env: Mapping[str, str]) -> int:
    """Start redis (if needed), N workers and the UI; supervise until a signal; stop all."""
    redis, refused = ensure_redis(args)
    if refused is not None:
        return refused
    # mitmdump's own arguments, started through the module that sets SO_REUSEPORT first
    fleet = Fleet([sys.executable, "-m", "keypool.mitm.reuseport", *command[1:]], args.workers,
                  env)
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: stopping.append(s))
    ui = None
    try:
        fleet.start()
        log(f"{args.workers} workers share port {args.port} (SO_REUSEPORT), pids "
            + " ".join(map(str, fleet.pids())))
        ui = subprocess.Popen(ui_command, env=dict(env), start_new_session=True,
                              preexec_fn=die_with_parent) if ui_command else None
        code = None
        while not stopping and code is None:
            code = fleet.check()
            time.sleep(POLL_S)
    finally:
        fleet.stop()
        stop_pid(ui)
        stop_pid(redis)
    return 0 if stopping else (code or 0)
