"""Key health and limits shared through Redis (``state: {backend: redis}``).

Health (cooldowns, dead marks, probes' outcomes): each change is written to a hash per key
(``PREFIX:cool:KEY``, scope -> end, reason, fingerprint) and published on ``PREFIX:events``;
every process applies the others' events to its own pool (``keypool.shared.apply``), so a
pick reads local memory only. On (re)connecting a process subscribes first, then reads every
hash (what it missed) and pushes its own live cooldowns (what Redis missed). Provider
outages and learned budgets travel the same way (keypool.shared_health, .shared_rows).

Limits: a key with ``rpm`` or ``max_in_flight`` takes a slot in one Lua call before each
attempt (``RESERVE``: check and reserve atomically, on Redis's clock, so two processes never
both take the last slot). An in-flight slot is a sorted-set member scored by its expiry: the
process refreshes the slots it holds every third of ``reservation_ttl_s``, so the slots of a
process that died lapse after at most that long.

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
from redis.exceptions import ConnectionError, RedisError, ResponseError

from . import shared_rows
from .shared import LocalState, Slot, apply, clear_event, cool_event, decode, local_events
from .shared_health import learn_event, live_outages, outage_event

logger = logging.getLogger("keymux")

RETRY_S = 0.5          # between reconnection attempts while Redis is unreachable
# A reservation that takes longer is given up: the attempt goes ahead on local limits (a
# reservation Redis made meanwhile counts in the window; its in-flight slot lapses by ttl).
CALL_TIMEOUT_S = 0.5

# KEYS: rpm window, in-flight set. ARGV: rpm (0: none), max in flight (0: none), token, ttl ms.
# Returns {1, 0} (reserved) or {0, ms to wait}.
RESERVE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local rpm, cap, tok, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= cap then return {0, 50} end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, math.max(1, tonumber(oldest[2]) + 60000 - now)}
  end
  redis.call('ZADD', KEYS[1], now, tok)
  redis.call('PEXPIRE', KEYS[1], 61000)
end
if cap > 0 then
  redis.call('ZADD', KEYS[2], now + ttl, tok)
  redis.call('PEXPIRE', KEYS[2], ttl + 1000)
end
return {1, 0}
"""

# KEYS: in-flight set. ARGV: ttl ms, tokens...: push the expiry of slots still held.
REFRESH = """
local t = redis.call('TIME')
local exp = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', exp, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + 1000)
return 0
"""


class Lane:
    """One connection that pipelines the hot path's calls: each is written at once, in
    order, and a reader task hands the answers back in the same order (Redis answers in
    order). Half the client cost of the pooled client: no connection checked out per call.
    Any failure fails every call waiting and closes it; the next call reopens it."""

    def __init__(self, pool, script: str):
        kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._make = lambda: pool.connection_class(**kwargs)
        self.script = script
        self.sha = ""
        self.conn = None
        self._waiting: deque[asyncio.Future] = deque()
        self._reader: asyncio.Task | None = None
        self._opening: asyncio.Lock | None = None

    async def call(self, *args):
        if self.conn is None:
            await self._open()
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)  # before the write, with no await between: order kept
        try:
            await self.conn.send_packed_command(
                self.conn.pack_command("EVALSHA", self.sha, *args), check_health=False)
        except BaseException as e:
            self._fail(e)
            raise
        return await fut

    async def _open(self) -> None:
        self._opening = self._opening or asyncio.Lock()
        async with self._opening:
            if self.conn is not None:
                return
            conn = self._make()
            await conn.connect()
            await conn.send_command("SCRIPT", "LOAD", self.script)
            sha = await conn.read_response()
            self.sha = sha.decode() if isinstance(sha, bytes) else sha
            self.conn = conn
            self._reader = asyncio.get_running_loop().create_task(self._read(conn))

    async def _read(self, conn) -> None:
        while True:
            try:
                answer = await conn.read_response()
            except asyncio.CancelledError:
                raise
            except RedisError as e:
                if not isinstance(e, ResponseError):  # the connection broke
                    self._fail(e)
                    return
                answer = e
            if self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    (fut.set_exception if isinstance(answer, Exception) else fut.set_result)(answer)

    def _fail(self, e: BaseException) -> None:
        conn, self.conn = self.conn, None
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError(f"shared state lane closed: {e}"))
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reader = None
        if conn is not None:
            asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))

    async def close(self) -> None:
        if self.conn is not None:
            self._fail(ConnectionError("closed"))


def safe_url(url: str) -> str:
    """The url without a password, for health and logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


class RedisState(LocalState):
    backend = "redis"
    shares_limits = True

    def __init__(self, spec, pool, ledger=None, spend_origin: str = ""):
        self.spec, self.pool, self.ledger = spec, pool, ledger
        # who this process's spend totals belong to, stable across its restarts (its
        # state_dir): a restarted process replaces its own totals instead of adding to them
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
        self._seq = 0
        self._out: deque = deque()  # ("ev", Event) | ("rel", key, token), written in order
        self._wake = asyncio.Event()
        self._held: dict[str, str] = {}  # token -> key name: slots to refresh while held
        self._learned: dict = {}  # key name -> key: its learned budget, at the next write
        self._tasks: list[asyncio.Task] = []
        self.client = aioredis.Redis.from_url(spec.url, socket_timeout=2.0,
                                              socket_connect_timeout=1.0)
        self._lane = Lane(self.client.connection_pool, RESERVE)
        self._refresh = self.client.register_script(REFRESH)

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

    # -- limits -----------------------------------------------------------------------

    def needs_slot(self, key) -> bool:
        return self.ok and bool(key.spec.rpm or key.spec.max_in_flight)

    async def reserve(self, key) -> tuple[Slot | None, float]:
        self._seq += 1
        token = f"{self.origin}:{self._seq}"
        name = key.name
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                got, wait_ms = await self._lane.call(
                    2, f"{self.prefix}:rpm:{name}", f"{self.prefix}:inf:{name}",
                    key.spec.rpm or 0, key.spec.max_in_flight or 0, token, self.ttl_ms)
        except (RedisError, OSError, TimeoutError) as e:
            # (a late answer to a call given up meets its cancelled future: order is kept)
            self._down(e)
            return None, 0.0  # serve on local limits
        if not got:
            return None, max(int(wait_ms), 1) / 1000.0
        if key.spec.max_in_flight:
            self._held[token] = name
        return Slot(name, token), 0.0

    def release(self, slot: Slot | None) -> None:
        if slot is not None and self._held.pop(slot.token, None) is not None:
            self._queue(("rel", slot.key, slot.token))

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
            for period in ("day", "month"):
                label = self.ledger.label(period, wall)
                for row in await shared_rows.read_spend(self.client, self.prefix, label):
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
            keys, self._learned = self._learned.values(), {}
            self._out.extend(("ev", ev) for k in keys if (ev := learn_event(self.pool, k)))
        while self._out:
            batch = [self._out.popleft() for _ in range(min(len(self._out), 256))]
            pipe = self.client.pipeline(transaction=False)
            for item in batch:
                if item[0] == "rel":
                    pipe.zrem(f"{self.prefix}:inf:{item[1]}", item[2])
                elif item[0] == "spend":
                    shared_rows.write_spend(pipe, self.prefix, self.channel, self.origin,
                                            self.spend_origin, *item[1:])
                else:
                    self._store(pipe, item[1])
            try:
                await pipe.execute()
            except BaseException:
                self._out.extendleft(reversed([i for i in batch if i[0] == "rel"]))
                raise

    def _store(self, pipe, ev) -> None:
        shared_rows.write(pipe, self.prefix, ev)
        pipe.publish(self.channel, json.dumps({**ev.to_dict(), "origin": self.origin}))

    async def _keep_slots(self) -> None:
        """Push the expiry of every slot still held, every third of the ttl."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000.0)
            by_key: dict[str, list[str]] = {}
            for token, name in list(self._held.items()):
                by_key.setdefault(name, []).append(token)
            try:
                for name, tokens in by_key.items():
                    await self._refresh(keys=[f"{self.prefix}:inf:{name}"],
                                        args=[self.ttl_ms, *tokens])
            except (RedisError, OSError) as e:
                self._down(e)


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
