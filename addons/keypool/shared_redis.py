"""Key health and limits shared through Redis (``state: {backend: redis}``).

Health (cooldowns, dead marks, probes' outcomes): each change is written to a hash per key
(``PREFIX:cool:KEY``, scope -> end, reason, fingerprint) and published on ``PREFIX:events``;
every process applies the others' events to its own pool (``keypool.shared.apply``), so a
pick reads local memory only. On (re)connecting a process subscribes first, then reads every
hash (what it missed) and pushes its own live cooldowns (what Redis missed). Provider
outages and learned budgets travel the same way (keypool.shared_health, .shared_rows).

Limits (keypool.shared_lua): a key's rpm, tpm and in-flight slots, and a client's rpm and
budget hold, are checked and taken in one Lua call before each attempt (``RESERVE``), so two
processes never both take the last; held things lapse by ``reservation_ttl_s`` if the
process holding them dies.

Redis unreachable: every call fails fast, the process serves on its local state (its own
windows and cooldowns), ``status()`` says so, and a background task reconnects and resyncs.
All I/O is redis.asyncio on the event loop; nothing here blocks a hook.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import shared_rows
from .shared import LocalState, apply, clear_event, cool_event, decode, local_events
from .shared_health import learn_event, live_outages, outage_event
from .shared_lua import SharedSlots

LEARN_EVERY_S = 0.25  # a key's learned budget goes to the others at most this often

logger = logging.getLogger("keymux")

RETRY_S = 0.5          # between reconnection attempts while Redis is unreachable


def safe_url(url: str) -> str:
    """The url without a password, for health and logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


class RedisState(SharedSlots, LocalState):
    backend = "redis"
    shares_limits = True

    def __init__(self, spec, pool, ledger=None, spend_origin: str = ""):
        self.spec, self.pool, self.ledger = spec, pool, ledger
        # who this process's spend totals belong to, stable across its restarts: ORIGIN
        # (a hash of host and state_dir), ORIGIN/wN for worker N of `keymux run --workers`
        # (one store, one origin per worker): a restarted process goes on from its own total
        self.spend_origin = spend_origin or os.urandom(6).hex()
        self.push_spend = None  # () -> None: queue this process's budgeted totals (resync)
        self.prefix = spec.prefix
        self.channel = f"{self.prefix}:events"
        self.origin = os.urandom(6).hex()  # this process: its own events are not re-applied
        self.ttl_ms = int(spec.reservation_ttl_s * 1000)
        self.ok = False
        self.error: str | None = "not connected yet"
        self.since = time.time()
        self.received = 0
        # ("ev", Event) | ("rel", key, token) | ("spend", ...) | ("cmd", fn(pipe)), in order
        self._out: deque = deque()
        self._wake = asyncio.Event()
        self._learned: dict = {}  # key name -> key: its learned budget, at the next write
        self._learn_sent: dict[str, float] = {}  # key name -> when its last event went out
        self._learn_timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task] = []
        self.client = aioredis.Redis.from_url(spec.url, socket_timeout=2.0,
                                              socket_connect_timeout=1.0)
        self._init_slots()  # keypool.shared_lua: the hot path's reserve call

    # -- health -----------------------------------------------------------------------

    def cooled(self, key, scope: str, end_wall: float, reason: str) -> None:
        self._queue(("ev", cool_event(key, scope, end_wall, reason)))

    def cleared(self, key, scopes: tuple[str, ...]) -> None:
        self._queue(("ev", clear_event(key, scopes)))

    def outage(self, provider: str, st) -> None:
        self._queue(("ev", outage_event(self.pool, provider, st)))

    def learned(self, key) -> None:
        self._learned[key.name] = key  # coalesced: one event per key per write
        self._wake.set()

    def _due_learned(self) -> list:
        """The learned budgets to tell now: a key's at most every LEARN_EVERY_S (each answer
        with rate-limit headers teaches one; one event per answer cost a Redis write and a
        pub/sub delivery per request), at once when it is exhausted. The others wait for a
        timer (each process also learns from its own answers meanwhile)."""
        now, due, wait = time.monotonic(), [], None
        for name, key in list(self._learned.items()):
            ev = learn_event(self.pool, key)
            left = self._learn_sent.get(name, -LEARN_EVERY_S) + LEARN_EVERY_S - now
            if ev is not None and left > 0 and ev.requests != 0 and ev.tokens != 0:
                wait = left if wait is None else min(wait, left)
                continue
            del self._learned[name]
            if ev is not None:
                self._learn_sent[name] = now
                due.append(ev)
        if wait is not None and self._learn_timer is None:
            self._learn_timer = asyncio.get_running_loop().call_later(wait, self._learn_due)
        return due

    def _learn_due(self) -> None:
        self._learn_timer = None
        self._wake.set()

    def _queue(self, item) -> None:
        if len(self._out) < 10_000:  # bounded while Redis is down; resync pushes the rest
            self._out.append(item)
        self._wake.set()

    # -- budgets ----------------------------------------------------------------------

    def spent(self, label: str, dim: str, name: str, usd: float, tokens: int) -> None:
        """This process's running total of a budgeted key or client in a period."""
        self._queue(("spend", label, dim, name, usd, tokens))

    def _adopt_spend(self, who: str, label: str, dim: str, name: str, usd, tokens) -> None:
        if self.ledger is not None and who != self.spend_origin:
            self.ledger.remote.setdefault((label, dim, name), {})[who] = (float(usd), int(tokens))

    def _base_spend(self, rows: list[tuple], wall: float) -> None:
        """Once, before this process pushes any total: what its origin had in Redis (a
        restarted process, or worker slot, goes on from it) and what the other workers of
        its store have (keypool.spend.Ledger.set_base)."""
        store = self.spend_origin.split("/", 1)[0]
        own, siblings = {}, {}
        for who, label, dim, name, usd, tokens in rows:
            if who == self.spend_origin:
                own[(label, dim, name)] = (float(usd), int(tokens))
            elif who.split("/", 1)[0] == store:
                u, t = siblings.get((label, dim, name), (0.0, 0))
                siblings[(label, dim, name)] = (u + float(usd), t + int(tokens))
        self.ledger.set_base(own, siblings, "/" not in self.spend_origin, wall)

    # -- status -----------------------------------------------------------------------

    def status(self) -> dict:
        return {"backend": "redis", "url": safe_url(self.spec.url), "prefix": self.prefix,
                "ok": self.ok, "error": self.error, "since": self.since}

    def _down(self, e: BaseException) -> None:
        if self.ok:
            logger.warning("keymux: shared state: Redis at %s unreachable (%s); serving on "
                           "this process's local state until it is back",
                           safe_url(self.spec.url), type(e).__name__)
            self.since = time.time()
        self.ok = False
        self.error = f"{type(e).__name__}: {e}"[:200]

    def _up(self) -> None:
        if not self.ok:
            logger.warning("keymux: shared state: connected to Redis at %s",
                           safe_url(self.spec.url))
            self.since = time.time()
        self.ok, self.error = True, None

    # -- background tasks ---------------------------------------------------------------

    def start(self) -> None:
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._write()),
                       loop.create_task(self._keep_slots())]

    async def stop(self) -> None:
        if self._learn_timer is not None:
            self._learn_timer.cancel()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self._flush()  # release what we hold: other processes may use it now
        except (RedisError, OSError):
            pass
        await self._lane.close()
        await self.client.aclose()

    async def _listen(self) -> None:
        """Subscribe, resync, then apply the others' events; reconnect on any failure."""
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await self._resync()
                self._up()
                while self.ok:  # another call failed meanwhile: resync, then say up again
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None:
                        await pubsub.ping()  # a dead server shows here within a second
                    elif msg["type"] == "message":
                        self._on_message(msg["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as e:
                self._down(e)
            except Exception as e:  # a malformed row in Redis: say so, keep listening
                logger.warning("keymux: shared state: resync failed (%s: %s); retrying",
                               type(e).__name__, e)
                self._down(e)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(RETRY_S)

    def _on_message(self, data: bytes) -> None:
        try:
            d = json.loads(data)
            if d.get("origin") == self.origin:
                return
            if d.get("kind") == "spend":
                self._adopt_spend(d["who"], d["label"], d["dim"], d["name"], d["usd"], d["tokens"])
            else:
                apply(self.pool, decode(d))
            self.received += 1
        except (ValueError, KeyError, TypeError, AttributeError):  # (JSON but no object)
            logger.warning("keymux: shared state: ignored a malformed event on %s", self.channel)

    async def _resync(self) -> None:
        """Adopt every cooldown and outage Redis holds, then push this process's own."""
        for ev in await shared_rows.read(self.client, self.prefix):
            apply(self.pool, ev)
        for ev in local_events(self.pool) + live_outages(self.pool):
            self._queue(("ev", ev))
        if self.ledger is not None:
            wall = self.pool.clock.wall()
            rows = []
            for period in ("day", "month"):
                label = self.ledger.label(period, wall)
                rows += await shared_rows.read_spend(self.client, self.prefix, label)
            if self.ledger.base is None:  # first reached: this origin's earlier totals
                self._base_spend(rows, wall)
            for row in rows:
                self._adopt_spend(*row)
            if self.push_spend is not None:
                self.push_spend()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except (RedisError, OSError) as e:
                self._down(e)
                await asyncio.sleep(RETRY_S)

    async def _flush(self) -> None:
        if self._learned:
            self._out.extend(("ev", ev) for ev in self._due_learned())
        while self._out:
            batch = [self._out.popleft() for _ in range(min(len(self._out), 256))]
            pipe = self.client.pipeline(transaction=False)
            for item in batch:
                if item[0] == "rel":
                    pipe.zrem(f"{self.prefix}:inf:{item[1]}", item[2])
                elif item[0] == "cmd":  # keypool.shared_lua: a budget hold's release
                    item[1](pipe)
                elif item[0] == "spend":
                    shared_rows.write_spend(pipe, self.prefix, self.channel, self.origin,
                                            self.spend_origin, *item[1:])
                    # where RESERVE reads it (keypool.shared_lua)
                    self.store_client_spent(pipe, item[1], *item[3:], shared_rows.SPEND_KEEP_S,
                                            item[2])
                else:
                    self._store(pipe, item[1])
            try:
                await pipe.execute()
            except BaseException:
                self._out.extendleft(reversed([i for i in batch if i[0] in ("rel", "cmd")]))
                raise

    def _store(self, pipe, ev) -> None:
        shared_rows.write(pipe, self.prefix, ev)
        pipe.publish(self.channel, json.dumps({**ev.to_dict(), "origin": self.origin}))



class SharedStateCollector:
    """``keymux_shared_state_up``: 1 while Redis is reachable, 0 while this process serves
    on its local state alone (read at scrape time)."""

    def __init__(self, state: RedisState):
        self.state = state

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        up = GaugeMetricFamily("keymux_shared_state_up", "1 while the shared state backend "
                               "(Redis) is reachable, 0 while this process serves on local "
                               "state", labels=["backend"])
        up.add_metric(["redis"], 1.0 if self.state.ok else 0.0)
        yield up
