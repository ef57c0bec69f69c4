"""Provider outages and learned budgets between two pools through a real redis-server
(keypool.shared_health over keypool.shared_redis): seen by the other within a deadline,
adopted by a process that (re)connects."""
import asyncio
import json
import time

import pytest

from keypool.clock import SystemClock
from keypool.config import StateSpec
from keypool.pool import Pool, ProviderOutage

from tests.redisserver import RedisServer, needs_redis
from .helpers import config, key, until

pytestmark = needs_redis

KEYS = [key("k1"), key("k2"), key("k3")]


@pytest.fixture(scope="module")
def redis_url():
    with RedisServer() as server:
        yield server.url


def node(url, prefix, keys=KEYS):
    from keypool.shared_redis import RedisState
    pool = Pool(config(keys=keys), SystemClock())
    pool.shared = RedisState(StateSpec("redis", url, prefix, 30.0), pool)
    pool.shared.start()
    return pool




def outage_in(p):
    """Server errors from most keys of 'openai' at once: what Gateway.judge tells the pool."""
    for _ in range(2):
        lease = p.pick("openai", "gpt-4o-mini")
        p.observe(lease, "server")
        p.release(lease, outcome="server", latency=0.1)
    assert "openai" in p.outages.down


async def stop(*pools):
    for p in pools:
        await p.shared.stop()


def test_an_outage_reaches_the_other_process_and_so_does_its_end(redis_url):
    async def main():
        a, b = node(redis_url, "out"), node(redis_url, "out")
        try:
            assert await until(lambda: a.shared.ok and b.shared.ok)
            t0 = time.monotonic()
            outage_in(a)
            # the figure is 100 ms (a few ms here); a loaded machine gets a deadline
            assert await until(lambda: "openai" in b.outages.down)
            print(f"b saw the outage {(time.monotonic() - t0) * 1000:.1f} ms after a")
            with pytest.raises(ProviderOutage):
                b.pick("openai", "gpt-4o-mini")
            # a's probe is announced: b holds its own back even once its schedule is due
            await until(lambda: a.outages.wait("openai") == 0, timeout=3)
            probe = a.pick("openai", "gpt-4o-mini")
            assert probe.provider_probe
            assert await until(lambda: b.outages.state["openai"].remote_until > 0)
            assert a.observe(probe, "ok")  # it answers: the outage ends everywhere
            a.release(probe, outcome="ok", latency=0.1)
            assert await until(lambda: not b.outages.down)
            b.pick("openai", "gpt-4o-mini")
        finally:
            await stop(a, b)
    asyncio.run(main())


def test_a_learned_budget_is_adopted_by_the_other_process(redis_url):
    async def main():
        a, b = node(redis_url, "learn"), node(redis_url, "learn")
        try:
            assert await until(lambda: a.shared.ok and b.shared.ok)
            ka, kb = a.by_name["k1"], b.by_name["k1"]
            ka.limits.learn(a.clock.monotonic(), 1, 30.0, 900, 20.0)
            a.shared.learned(ka)
            assert await until(lambda: kb.limits.requests.current(b.clock.monotonic()) == 1)
            now = b.clock.monotonic()
            assert kb.limits.tokens.current(now) == 900
            kb.limits.reserve(now, 1)  # b's own take
            assert 25 < kb.limits.wait_for(now, 1) <= 30  # held until the reset a learned
            assert b.pick("openai", "gpt-4o-mini").key.name != "k1"
        finally:
            await stop(a, b)
    asyncio.run(main())


def test_learned_budgets_are_told_once_per_interval_unless_exhausted(redis_url, monkeypatch):
    import keypool.shared_redis as shared_redis
    monkeypatch.setattr(shared_redis, "LEARN_EVERY_S", 5.0)  # long: a wait cannot pass for "at once"
    async def main():
        a, b = node(redis_url, "learnrate"), node(redis_url, "learnrate")
        try:
            assert await until(lambda: a.shared.ok and b.shared.ok)
            ka, kb = a.by_name["k1"], b.by_name["k1"]
            left = lambda: kb.limits.requests.current(b.clock.monotonic())
            for n in range(500, 450, -1):  # 50 answers in a burst, each teaching one
                ka.limits.learn(a.clock.monotonic(), n, 30.0, None, None)
                a.shared.learned(ka)
                await asyncio.sleep(0)
            assert await until(lambda: left() is not None)
            first = left()
            assert not await until(lambda: left() != first, timeout=0.5)  # the rest wait
            ka.limits.learn(a.clock.monotonic(), 0, 30.0, None, None)  # exhausted: told at once
            a.shared.learned(ka)
            assert await until(lambda: left() == 0, timeout=3.0)
        finally:
            await stop(a, b)
    asyncio.run(main())


def test_a_process_that_reconnects_or_starts_late_adopts_a_live_outage(redis_url):
    import redis
    async def main():
        a, b = node(redis_url, "resync"), node(redis_url, "resync")
        try:
            assert await until(lambda: a.shared.ok and b.shared.ok)
            outage_in(a)
            assert await until(lambda: "openai" in b.outages.down)
            row = json.loads(redis.Redis.from_url(redis_url).hget("resync:outage", "openai"))
            assert row["kind"] == "outage" and row["since"] > 0 and row["fp"]
            b.outages.forget("openai", tell=False)  # as if b missed it...
            b.shared._down(ConnectionError("a blip"))  # ...while disconnected: it resyncs
            assert await until(lambda: "openai" in b.outages.down, timeout=5)
            c = node(redis_url, "resync")  # a process that starts now
            try:
                assert await until(lambda: "openai" in c.outages.down)
            finally:
                await stop(c)
            a.reset_cooldown("k1")  # an operator's reset: over everywhere, row removed
            assert await until(lambda: not b.outages.down)
            assert redis.Redis.from_url(redis_url).hget("resync:outage", "openai") is None
        finally:
            await stop(a, b)
    asyncio.run(main())


def test_an_outage_of_a_provider_at_another_url_is_ignored(redis_url):
    from keypool.providers import ProviderSpec
    from keypool.config import Config, Routing
    from keypool.providers import PRESETS

    async def main():
        a = node(redis_url, "url")
        other = Config(providers={**PRESETS, "openai": ProviderSpec("openai", "http://elsewhere/v1")},
                       keys=tuple(KEYS), routing=Routing())
        b = node(redis_url, "url")
        b.update(other)
        try:
            assert await until(lambda: a.shared.ok and b.shared.ok)
            outage_in(a)
            assert await until(lambda: b.shared.received > 0)
            assert not b.outages.down
        finally:
            await stop(a, b)
    asyncio.run(main())


def test_malformed_events_on_the_channel_are_ignored_and_the_mirror_goes_on(redis_url):
    import redis
    from keypool.poolstate import fingerprint

    async def main():
        a, b = node(redis_url, "junk"), node(redis_url, "junk")
        r = redis.Redis.from_url(redis_url)
        try:
            assert await until(lambda: a.shared.ok and b.shared.ok)
            fp = fingerprint(b.by_name["k1"].spec.secret)
            for junk in (b"not json", b"[1, 2]", b"7", b'{"kind": "outage"}',
                         b'{"kind": "learn", "key": "k1", "fp": "%s", "requests": NaN}' % fp.encode(),
                         b'{"kind": "outage", "provider": "openai", "fp": "x", "next": 1e400}'):
                r.publish("junk:events", junk)
            outage_in(a)  # the real event after the junk still arrives
            assert await until(lambda: "openai" in b.outages.down)
            assert b.shared.ok and b.by_name["k1"].limits.requests.current(
                b.clock.monotonic()) is None
            r.hset("junk:outage", "openai", "garbage")
            c = node(redis_url, "junk")  # a garbage outage row does not stop a resync
            try:
                assert await until(lambda: c.shared.ok) and not c.outages.down
            finally:
                await stop(c)
        finally:
            r.close()
            await stop(a, b)
    asyncio.run(main())
