"""What outlives one addon instance: the gateway, its store and its writer.

mitmproxy re-executes the ``-s`` script when it changes, creating a new addon, but keeps
imported modules: keeping the runtime here lets key state survive a script reload.
"""
from __future__ import annotations

import atexit
import hashlib
import socket
import logging
import os
import sys
import sqlite3
from dataclasses import dataclass

from ..config import Config
from ..gateway import Gateway
from ..store import DB_NAME, SQLiteStore, Writer

logger = logging.getLogger("keymux")


@dataclass
class Runtime:
    gateway: Gateway
    store: SQLiteStore
    writer: Writer
    fleetlog: object | None = None  # store.fleetlog.FleetLog: state: {backend: redis}
    gateway_id: str = ""            # who wrote a request-log row (host, worker, pid)

    def flush(self) -> None:
        """Hand what the loop collected to the writer thread (no disk I/O here)."""
        gw = self.gateway
        batch = gw.recorder.drain(gw.pool.export_state())
        batch.spend = gw.ledger.drain()
        for row in batch.requests:
            row["gateway"] = self.gateway_id
        self.writer.submit(batch)
        if self.fleetlog is not None:
            wall = gw.clock.wall()  # the ledger's day and month, for the fleet's spend
            labels = (gw.ledger.label("day", wall), gw.ledger.label("month", wall))
            if batch.requests or batch.usage or batch.spend:
                self.fleetlog.submit(batch, labels)
            else:
                self.fleetlog.spend.labels = labels


_runtimes: dict[str, Runtime] = {}

# The keymux addon instance that is live now (None between a script's done() and the next
# instance's running(), or for good when a reloaded script fails to load).
active: object | None = None


def runtime_for(path: str, config: Config, admin_token: str | None = None) -> Runtime:
    rt = _runtimes.get(path)
    if rt is None:
        gw = Gateway(config, admin_token=admin_token)
        store = SQLiteStore(config.state_dir / DB_NAME, lazy=True)
        _restore(gw, store)
        writer = Writer(store, config.logging.retention_days)
        gw.store_status = writer.status
        gw.metrics.watch_store(writer.status)
        _share(gw, config)
        rt = _runtimes[path] = Runtime(gw, store, writer, gateway_id=gateway_id())
        rt.fleetlog = _fleet_log(gw, config, rt.gateway_id)
    else:
        rt.gateway.update(config)
        rt.gateway.admin_token = admin_token or None
    return rt


def _share(gw: Gateway, config: Config) -> None:
    """state: {backend: redis}: the pool shares key health and limits (keypool.shared_redis);
    started by the addon's running(). A changed state section needs a restart."""
    if config.state.backend != "redis":
        return
    from ..shared_redis import RedisState, SharedStateCollector, safe_url
    origin = hashlib.sha256(f"{socket.gethostname()}|{config.state_dir.resolve()}".encode())
    worker = os.environ.get("KEYMUX_WORKER")  # workers share a store, not a spend origin
    spend_origin = origin.hexdigest()[:12] + (f"/w{worker}" if worker else "")
    gw.pool.shared = shared = RedisState(config.state, gw.pool, gw.ledger, spend_origin)
    gw.budgets.shared = shared  # client and key budgets count every process's spend

    def push_spend() -> None:  # on (re)connecting: this process's totals, for the others
        wall = gw.clock.wall()
        for name in gw.budgets.keys:
            gw.budgets.share(name, None, wall)
        for name in gw.budgets.clients:
            gw.budgets.share("", name, wall)
    shared.push_spend = push_spend
    _stagger(gw, origin.hexdigest())
    gw.metrics.registry.register(SharedStateCollector(gw.pool.shared))
    logger.info("keymux: sharing key state through Redis at %s (prefix %s)",
                safe_url(config.state.url), config.state.prefix)


def _stagger(gw: Gateway, origin: str) -> None:
    """Each process of a fleet starts its round robin at its own place in the cycle
    (keypool.strategies.stagger): a worker of `keymux run --workers N` at its slot's
    share, any other process at a place its origin (host, state_dir) picks."""
    from ..strategies import stagger
    index, count = os.environ.get("KEYMUX_WORKER", ""), os.environ.get("KEYMUX_WORKERS", "")
    if index.isdigit() and count.isdigit():
        stagger(gw.pool, int(index), int(count))
    else:
        stagger(gw.pool, int(origin[:8], 16) % 1024, 1024)


def gateway_id() -> str:
    """``host:pid``, or ``host/wN:pid`` for worker N of ``keymux run --workers``."""
    worker = os.environ.get("KEYMUX_WORKER")
    return f"{socket.gethostname()}{f'/w{worker}' if worker else ''}:{os.getpid()}"


def spend_id(config: Config) -> str:
    """Whose spend a row of the fleet's ``spend_day`` is: ``HOST[/wN]@ORIGIN``, the same
    across restarts (ORIGIN: a hash of the host and ``state_dir``), so a restarted process
    goes on from its own total instead of adding a second one."""
    host = socket.gethostname()
    origin = hashlib.sha256(f"{host}|{config.state_dir.resolve()}".encode()).hexdigest()[:8]
    worker = os.environ.get("KEYMUX_WORKER")
    return f"{host}{f'/w{worker}' if worker else ''}@{origin}"


def _fleet_log(gw: Gateway, config: Config, gid: str):
    """state: {backend: redis}: the request log and usage mirrored to Redis streams and
    hashes (keypool.store.fleetlog), so the web UI shows every process's."""
    if config.state.backend != "redis":
        return None
    import redis
    from ..store.fleetlog import FleetLog, FleetLogCollector
    client = redis.Redis.from_url(config.state.url, socket_timeout=2.0,
                                  socket_connect_timeout=1.0)
    log = FleetLog(client, config.state.prefix, config.state.log_max, gid, spend_id(config))
    wall = gw.clock.wall()  # the first write reads this process's earlier spend back
    log.spend.labels = (gw.ledger.label("day", wall), gw.ledger.label("month", wall))
    gw.fleet_log = log
    gw.metrics.registry.register(FleetLogCollector(log))
    return log


def _restore(gw: Gateway, store: SQLiteStore) -> None:
    """Saved cooldowns and counters; a store that cannot be read yet starts the gateway
    without them (the writer reports the store's state in health and retries)."""
    try:
        saved = store.load_keys()
    except (sqlite3.Error, OSError) as e:
        logger.error("keymux: cannot read the state store %s (%s: %s); starting without "
                     "saved cooldowns and counters", store.path, type(e).__name__, e)
        return
    restored = gw.pool.restore_state(saved)
    if restored:
        logger.info("keymux: restored cooldowns and counters of %d keys from %s",
                    restored, store.path)
    try:
        gw.ledger.restore(store.load_spend(gw.ledger.since_day(gw.clock.wall())))
    except (sqlite3.Error, OSError) as e:
        logger.error("keymux: cannot read saved spend from %s (%s: %s); spend starts at 0",
                     store.path, type(e).__name__, e)


def exit_cleanly_at_exit(master) -> None:
    """After a requested shutdown, end the process with status 0 before the interpreter's
    final garbage collection. Once per process, and only under mitmdump/mitmweb.

    In that phase mitmproxy_rs's tokio threads are torn down by a forced unwind that
    sometimes crashes the process (SIGSEGV, exit -11; mitmproxy issue 7409; seen in about
    1 of 15 Ctrl-Cs here, never without keymux's threads). By then everything keymux keeps
    is written: ``done`` flushed the store, and SQLite's WAL is durable at each commit.
    Any other exit (an error at start-up: status 1) finalizes as usual.
    """
    global _exit_registered
    if _exit_registered or type(master).__name__ not in ("DumpMaster", "WebMaster"):
        return
    _exit_registered = True

    def _exit() -> None:
        if not master.should_exit.is_set():
            return
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(0)

    atexit.register(_exit)


_exit_registered = False
