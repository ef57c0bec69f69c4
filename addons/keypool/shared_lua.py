"""The hot path's one Redis round trip per attempt: the RESERVE Lua call (sent on a Lane,
keypool.shared_lane).

Before an attempt, ``reserve`` checks and takes, atomically on Redis's clock, whatever
the attempt needs that other processes could also want (so two never both take the last):

- the key's ``rpm`` window, ``max_in_flight`` slots and ``tpm`` tokens (the estimate; the
  real count settles it afterwards, off the hot path: batched per key every 0.2 s);
- on a request's first reserve call, its client's admission (``keypool.shared_ask``):
  the client's ``rpm`` window, and its budget's hold (the estimate, counted with every
  process's spend and every hold in flight). A client refused takes nothing of the key;
- on a key with a ``budget`` (daily_usd, monthly_usd), the attempt's hold of the request's
  estimate against it, counted with every process's spend of the key and every hold on it
  in flight: a key committed to its limit across the processes is held back, as one
  process holds back its own (released once the attempt is over and its cost written).

A key with no limits or budget and a client with neither rpm nor budget make no call at all.

Redis keys (``P`` = ``state.prefix``; K = key name, C = client name, L = a day or month):
    P:rpm:K     zset  token -> ms        key rpm window (60 s)
    P:inf:K     zset  token -> expiry ms key in-flight slots (refreshed while held)
    P:tpm:K     zset  token -> ms        key tpm window (60 s) ...
    P:tpmn:K    hash  token -> tokens, _sum  ... its amounts and their running sum
    P:crpm:C    zset  token -> ms        client rpm window (60 s)
    P:hold:C    zset  token -> expiry ms client budget holds in flight (refreshed)
    P:holdn:C   hash  token -> "usd tokens", _u, _t   their amounts and running sums
    P:cspent:L:C hash origin -> "usd tokens"   each process's spend of the client in L
    P:khold:K   zset  token -> expiry ms key budget holds in flight (refreshed)
    P:kholdn:K  hash  token -> "usd 0", _u        their amounts and running sum
    P:kspent:L:K hash origin -> "usd tokens"   each process's spend of the key in L
Every call's token is ORIGIN:SEQ (this process, a counter). Held things (in-flight slots,
budget holds) carry an expiry pushed every third of
``reservation_ttl_s`` while held: a dead process's lapse after at most that long.
"""
from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from .shared import Slot
from .shared_lane import make_lane

# A reservation that takes longer is given up: the attempt goes ahead on local limits (a
# reservation Redis made meanwhile counts in the window; its in-flight slot lapses by ttl).
CALL_TIMEOUT_S = 0.5

# KEYS: 1 rpm, 2 inf, 3 tpm, 4 tpmn (key); 5 crpm, 6 hold, 7 holdn, 8 cspent day, 9 month;
#       10 khold, 11 kholdn, 12 kspent day, 13 kspent month (the key's budget).
# ARGV: 1 rpm, 2 cap, 3 token, 4 ttl ms, 5 tpm, 6 est tokens, 7 client rpm, 8 hold (0/1),
#       9 hold usd, 10 hold tokens, 11 daily usd, 12 monthly usd, 13 daily tokens (0: none);
#       14 key hold (0/1), 15 its usd, 16 daily usd, 17 monthly usd (0: none), 18 ms to the
#       day's end, 19 to the month's.
# A call without tpm, client or key budget part leaves the rest out (2 keys, 4 args:
# packing costs); one with a key budget but no client part pads 5-9 (never read).
# Returns {1} taken; {0, ms} the key is full (or committed to its budget); {2, ms} the
# client's rpm; {3, i, used} the client's budget i (1 daily usd, 2 monthly usd, 3 daily
# tokens) is committed.
RESERVE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local A = {}
for i = 1, 19 do A[i] = tonumber(ARGV[i] or '0') end
local tok = ARGV[3]
local function window(k, span, limit)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now - span)
  if redis.call('ZCARD', k) >= limit then
    local oldest = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    return math.max(1, tonumber(oldest[2]) + span - now)
  end
  return 0
end
local function expire(zk, hk, cutoff, sums)
  while true do
    local old = redis.call('ZRANGEBYSCORE', zk, '-inf', cutoff, 'LIMIT', 0, 500)
    if #old == 0 then return end
    local amts = redis.call('HMGET', hk, unpack(old))
    local gone = {0, 0}
    for i = 1, #amts do
      if amts[i] then
        local j = 0
        for n in string.gmatch(amts[i], '%S+') do j = j + 1; gone[j] = gone[j] + tonumber(n) end
      end
    end
    for j = 1, #sums do
      if gone[j] ~= 0 then redis.call(sums[j] == '_u' and 'HINCRBYFLOAT' or 'HINCRBY', hk,
                                      sums[j], -gone[j]) end
    end
    redis.call('HDEL', hk, unpack(old))
    redis.call('ZREM', zk, unpack(old))
  end
end
if A[8] == 1 then
  expire(KEYS[6], KEYS[7], now, {'_u', '_t'})
  local h = redis.call('HMGET', KEYS[7], '_u', '_t')
  local used = {tonumber(h[1] or '0'), tonumber(h[1] or '0'), tonumber(h[2] or '0')}
  for p = 8, 9 do  -- the day's spend for a daily limit, the month's for a monthly one
    local wanted = (p == 8) and (A[11] > 0 or A[13] > 0) or (p == 9 and A[12] > 0)
    for _, v in ipairs(wanted and redis.call('HVALS', KEYS[p]) or {}) do
      local u, n = string.match(v, '^(%S+) (%S+)$')
      if p == 8 then used[1] = used[1] + tonumber(u); used[3] = used[3] + tonumber(n)
      else used[2] = used[2] + tonumber(u) end
    end
  end
  for _, i in ipairs({2, 1, 3}) do  -- the month resets last: said first
    if A[10 + i] > 0 and used[i] >= A[10 + i] then return {3, i, tostring(used[i])} end
  end
end
if A[7] > 0 then
  local w = window(KEYS[5], 60000, A[7])
  if w > 0 then return {2, w} end
end
if A[2] > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= A[2] then return {0, 50} end
end
if A[1] > 0 then
  local w = window(KEYS[1], 60000, A[1])
  if w > 0 then return {0, w} end
end
if A[5] > 0 then
  expire(KEYS[3], KEYS[4], now - 60000, {'_sum'})
  local sum = tonumber(redis.call('HGET', KEYS[4], '_sum') or '0')
  if redis.call('ZCARD', KEYS[3]) == 0 then sum = 0; redis.call('HSET', KEYS[4], '_sum', 0) end
  -- more than the whole limit would never fit: it goes alone, on an empty window
  local need = sum - (A[6] <= A[5] and (A[5] - A[6]) or 0)
  if need > 0 then
    local rows = redis.call('ZRANGE', KEYS[3], 0, 255, 'WITHSCORES')
    local acc, at = 0, 0
    for i = 1, #rows, 2 do
      acc = acc + tonumber(redis.call('HGET', KEYS[4], rows[i]) or '0')
      at = tonumber(rows[i + 1])
      if acc >= need then break end
    end
    return {0, math.max(1, at + 60000 - now)}
  end
end
if A[14] == 1 then
  expire(KEYS[10], KEYS[11], now, {'_u', '_t'})
  local held = tonumber(redis.call('HGET', KEYS[11], '_u') or '0')
  local spent = {0, 0}
  for i = 1, 2 do  -- every process's spend of the key: the day's, the month's
    if A[15 + i] > 0 then
      for _, v in ipairs(redis.call('HVALS', KEYS[11 + i])) do
        spent[i] = spent[i] + tonumber(string.match(v, '^(%S+)'))
      end
    end
  end
  for _, i in ipairs({2, 1}) do  -- the month resets last: said first
    if A[15 + i] > 0 and spent[i] + held >= A[15 + i] then
      -- spent: out until the period resets; held: until holds go (the next tries)
      return {0, spent[i] >= A[15 + i] and math.max(1, A[17 + i]) or 1000}
    end
  end
end
if A[7] > 0 then
  redis.call('ZADD', KEYS[5], now, tok)
  redis.call('PEXPIRE', KEYS[5], 61000)
end
if A[8] == 1 then
  redis.call('ZADD', KEYS[6], now + A[4], tok)
  redis.call('HSET', KEYS[7], tok, ARGV[9] .. ' ' .. ARGV[10])
  if A[9] ~= 0 then redis.call('HINCRBYFLOAT', KEYS[7], '_u', A[9]) end
  redis.call('HINCRBY', KEYS[7], '_t', A[10])
  redis.call('PEXPIRE', KEYS[6], A[4] + 1000)
  redis.call('PEXPIRE', KEYS[7], A[4] + 1000)
end
if A[14] == 1 then
  redis.call('ZADD', KEYS[10], now + A[4], tok)
  redis.call('HSET', KEYS[11], tok, ARGV[15] .. ' 0')
  if A[15] ~= 0 then redis.call('HINCRBYFLOAT', KEYS[11], '_u', A[15]) end
  redis.call('PEXPIRE', KEYS[10], A[4] + 1000)
  redis.call('PEXPIRE', KEYS[11], A[4] + 1000)
end
if A[1] > 0 then
  redis.call('ZADD', KEYS[1], now, tok)
  redis.call('PEXPIRE', KEYS[1], 61000)
end
if A[2] > 0 then
  redis.call('ZADD', KEYS[2], now + A[4], tok)
  redis.call('PEXPIRE', KEYS[2], A[4] + 1000)
end
if A[5] > 0 then
  redis.call('ZADD', KEYS[3], now, tok)
  redis.call('HSET', KEYS[4], tok, A[6])
  redis.call('HINCRBY', KEYS[4], '_sum', A[6])
  redis.call('PEXPIRE', KEYS[3], 61000)
  redis.call('PEXPIRE', KEYS[4], 61000)
end
return {1}
"""

# KEYS: a zset of held things (in-flight slots, holds) and its other keys. ARGV: ttl ms,
# tokens...: push the expiry of those still held.
REFRESH = """
local t = redis.call('TIME')
local exp = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', exp, ARGV[i]) end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]) + 1000) end
return 0
"""

# KEYS: a client's hold zset and amounts hash. ARGV: a token: its hold goes (once).
RELEASE_HOLD = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if not old then return 0 end
local u, n = string.match(old, '^(%S+) (%S+)$')
if tonumber(u) ~= 0 then redis.call('HINCRBYFLOAT', KEYS[2], '_u', -tonumber(u)) end
if tonumber(n) ~= 0 then redis.call('HINCRBY', KEYS[2], '_t', -tonumber(n)) end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# KEYS: a key's tpm amounts hash. ARGV: token, real tokens, ...: settle the reservations
# still in the window (one call per key for every settle of the last SETTLE_EVERY_S).
SETTLE = """
local d = 0
for i = 1, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    d = d + tonumber(ARGV[i + 1]) - tonumber(old)
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
if d ~= 0 then redis.call('HINCRBY', KEYS[1], '_sum', d) end
return 0
"""

# Settles wait this long to go in one call per key: a write per request would cost the
# event loop ~0.17 ms of redis-py; until then the window counts the (larger) estimate.
SETTLE_EVERY_S = 0.2


class SharedSlots:
    """RedisState's limits: mixed into it (it provides prefix, ok, ttl_ms, origin,
    client, _queue and _down)."""

    def _init_slots(self) -> None:
        self._seq = 0
        self._held: dict[str, str] = {}   # token -> key name: in-flight slots held
        self._tpm: set[str] = set()       # tokens of tpm reservations not settled yet
        self._holds: dict[str, str] = {}  # token -> client name: budget holds held
        self._kholds: dict[str, str] = {}  # token -> key name: key budget holds held
        self._names: dict[str, tuple[str, ...]] = {}  # key name -> its Redis keys
        self._settles: dict[str, list] = {}  # key name -> [token, real tokens, ...]
        self._settle = self.client.register_script(SETTLE)
        self._lane = make_lane(self.client.connection_pool, RESERVE)
        self._refresh = self.client.register_script(REFRESH)

    def needs_slot(self, key, ask=None) -> bool:
        s = key.spec
        return self.ok and bool(ask is not None or s.rpm or s.max_in_flight or s.tpm
                                or s.budget)

    async def reserve(self, key, est_tokens: int = 0, ask=None, kask=None):
        """(slot, 0.0) taken; (None, seconds) the key is full; (None, 0.0) Redis is out of
        reach (local limits decide); ``ask`` (keypool.shared_ask.Ask): the client's
        admission too, refused as (None, Answer): 429 client_rate_limited/budget_exceeded;
        ``kask`` (shared_ask.KeyAsk): the attempt's hold against the key's budget."""
        self._seq += 1
        token = f"{self.origin}:{self._seq}"
        name, s = key.name, key.spec
        tpm = s.tpm or 0
        keys = self._names.get(name) or self._key_names(name)
        args = [s.rpm or 0, s.max_in_flight or 0, token, self.ttl_ms]
        if tpm or ask is not None or kask is not None:
            args += (tpm, est_tokens if tpm else 0)
        else:
            keys = keys[:2]
        p = self.prefix
        if ask is not None:
            c = ask.client
            keys = (*keys, f"{p}:crpm:{c}", f"{p}:hold:{c}", f"{p}:holdn:{c}",
                    f"{p}:cspent:{ask.day}:{c}", f"{p}:cspent:{ask.month}:{c}")
            args += (ask.rpm, 1 if ask.held else 0, ask.usd, ask.tokens, *ask.limits)
        elif kask is not None:  # no client part: its places padded (never read)
            keys = (*keys, *keys[:1] * 5)
            args += (0, 0, 0, 0, 0, 0, 0)
        if kask is not None:
            keys = (*keys, f"{p}:khold:{name}", f"{p}:kholdn:{name}",
                    f"{p}:kspent:{kask.day}:{name}", f"{p}:kspent:{kask.month}:{name}")
            args += (1, repr(float(kask.usd)), kask.daily, kask.monthly, kask.day_ms,
                     kask.month_ms)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                got = await self._lane.call(len(keys), *keys, *args)
        except (RedisError, OSError, TimeoutError) as e:
            # (a late answer to a call given up meets its cancelled future: order is kept)
            self._down(e)
            return None, 0.0  # serve on local limits
        code = int(got[0])
        if code == 0:
            return None, max(int(got[1]), 1) / 1000.0
        if code > 1:
            return None, ask.refused(code, got[1:])
        if s.max_in_flight:
            self._held[token] = name
        if tpm:
            self._tpm.add(token)
        if ask is not None and ask.held:
            self._holds[token] = ask.client
        if kask is not None:
            self._kholds[token] = name
        return Slot(name, token), 0.0

    def _key_names(self, name: str) -> tuple[str, ...]:
        p = self.prefix
        t = self._names[name] = (f"{p}:rpm:{name}", f"{p}:inf:{name}", f"{p}:tpm:{name}",
                                 f"{p}:tpmn:{name}")
        return t

    def release(self, slot: Slot | None, tokens: int | None = None) -> None:
        """The attempt is over; ``tokens``: its real count, settling its tpm reservation
        (None: the estimate stands, as the local window does for a failed attempt)."""
        if slot is None:
            return
        if self._held.pop(slot.token, None) is not None:
            self._queue(("rel", slot.key, slot.token))
        if slot.token in self._kholds:
            # after the attempt's spend, which the caller queues next (Gateway.finish):
            # Redis never sees its cost as neither spent nor held
            asyncio.get_running_loop().call_soon(self._release_khold, slot.token)
        if slot.token in self._tpm:
            self._tpm.discard(slot.token)
            if tokens is not None:  # bounded: only slots Redis granted are in _tpm
                self._settles.setdefault(slot.key, []).extend((slot.token, max(0, int(tokens))))

    def release_hold(self, token: str) -> None:
        """The request is over (its real cost already queued as spend): its hold goes."""
        client = self._holds.pop(token, None)
        if client is not None:
            zkey, hkey = f"{self.prefix}:hold:{client}", f"{self.prefix}:holdn:{client}"
            # in the writer's batch, after the request's spend: EVAL, not EVALSHA (a
            # pipeline cannot load a missing script; Redis caches it anyway)
            self._queue(("cmd", lambda pipe: pipe.eval(RELEASE_HOLD, 2, zkey, hkey, token)))

    def _release_khold(self, token: str) -> None:
        name = self._kholds.pop(token, None)
        if name is not None:
            zkey, hkey = f"{self.prefix}:khold:{name}", f"{self.prefix}:kholdn:{name}"
            self._queue(("cmd", lambda pipe: pipe.eval(RELEASE_HOLD, 2, zkey, hkey, token)))

    def store_client_spent(self, pipe, label: str, name: str, usd: float, tokens: int,
                           keep_s: int, dim: str = "client") -> None:
        """This process's total of a budgeted client (or key) in a period, where RESERVE
        reads it."""
        h = f"{self.prefix}:{'cspent' if dim == 'client' else 'kspent'}:{label}:{name}"
        pipe.hset(h, self.spend_origin, f"{float(usd)!r} {int(tokens)}")
        pipe.expire(h, keep_s)

    async def _keep_slots(self) -> None:
        """Settle tpm reservations every SETTLE_EVERY_S; push the expiry of every slot and
        hold still held every third of the ttl."""
        ticks = max(1, round(self.ttl_ms / 3000.0 / SETTLE_EVERY_S))
        while True:
            for _ in range(ticks):
                await asyncio.sleep(self.ttl_ms / 3000.0 / ticks)
                await self._flush_settles()
            groups: dict[tuple[str, ...], list[str]] = {}
            for token, name in list(self._held.items()):
                groups.setdefault((f"{self.prefix}:inf:{name}",), []).append(token)
            for token, c in list(self._holds.items()):
                groups.setdefault((f"{self.prefix}:hold:{c}", f"{self.prefix}:holdn:{c}"),
                                  []).append(token)
            for token, k in list(self._kholds.items()):
                groups.setdefault((f"{self.prefix}:khold:{k}", f"{self.prefix}:kholdn:{k}"),
                                  []).append(token)
            try:
                for keys, tokens in groups.items():
                    await self._refresh(keys=list(keys), args=[self.ttl_ms, *tokens])
            except (RedisError, OSError) as e:
                self._down(e)

    async def _flush_settles(self) -> None:
        settles, self._settles = self._settles, {}
        try:
            for name, args in settles.items():  # a lost settle leaves the estimate: safe
                await self._settle(keys=[f"{self.prefix}:tpmn:{name}"], args=args)
        except (RedisError, OSError) as e:
            self._down(e)
