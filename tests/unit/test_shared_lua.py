"""keypool.shared_lua against a real redis-server: tpm windows, client rpm and client
budget holds checked and taken in the one reserve call, never past a limit whoever asks."""
import asyncio
import time

import pytest

from keypool.budgets import Budgets
from keypool.clock import SystemClock
from keypool.config import ClientSpec, StateSpec
from keypool.config_money import Budget
from keypool.pool import Pool
from keypool.shared_ask import ask_for
from keypool.spend import Ledger
from keypool.spend_sums import Hold

from tests.redisserver import RedisServer, needs_redis
from .helpers import config, key

pytestmark = needs_redis


@pytest.fixture(scope="module")
def redis_url():
    with RedisServer() as server:
        yield server.url


@pytest.fixture(autouse=True)
def patient(monkeypatch):
    import keypool.shared_lua
    # about atomicity, not timeouts: first calls open connections on a busy machine
    monkeypatch.setattr(keypool.shared_lua, "CALL_TIMEOUT_S", 10.0)


def make(url, prefix, keys, ttl=30.0):
    from keypool.shared_redis import RedisState
    pool = Pool(config(keys=keys), SystemClock())
    pool.shared = RedisState(StateSpec("redis", url, prefix, ttl), pool, Ledger())
    pool.shared.ok = True  # reservations without the listener's first connect
    return pool


def ask(client, usd=0.0, tokens=0):
    budgets = Budgets(Ledger(), SystemClock())
    hold = Hold(None, client.name, usd, tokens=tokens) if client.budget else None
    return ask_for(client, hold, budgets, time.time(), False)


async def stop(*pools):
    for p in pools:
        await p.shared.stop()


def test_two_processes_never_take_more_than_the_tpm(redis_url):
    async def main():
        a, b = (make(redis_url, "tpm", [key("k", tpm=1000)]) for _ in range(2))
        ka, kb = a.by_name["k"], b.by_name["k"]
        got = await asyncio.gather(*[s.shared.reserve(k, 150) for _ in range(10)
                                     for s, k in ((a, ka), (b, kb))])
        granted = [slot for slot, wait in got if slot is not None]
        assert len(granted) == 6  # 6 * 150 <= 1000 < 7 * 150
        assert all(0 < wait <= 60 for slot, wait in got if slot is None)
        # the real counts settle the window (queued, off the hot path): room again
        for slot in granted:
            (a if slot.token.startswith(a.shared.origin) else b).shared.release(slot, 20)
        await a.shared._flush_settles()
        await b.shared._flush_settles()
        slot, wait = await b.shared.reserve(kb, 800)  # 6 * 20 + 800 <= 1000
        assert slot is not None and wait == 0.0
        slot, wait = await a.shared.reserve(ka, 100)
        assert slot is None and wait > 0
        await stop(a, b)
    asyncio.run(main())


def test_more_than_the_whole_tpm_goes_alone_on_an_empty_window(redis_url):
    async def main():
        a = make(redis_url, "big", [key("k", tpm=100)])
        k = a.by_name["k"]
        assert (await a.shared.reserve(k, 500))[0] is not None
        assert (await a.shared.reserve(k, 1))[0] is None
        await stop(a)
    asyncio.run(main())


def test_client_rpm_holds_across_processes_and_spares_the_key(redis_url):
    async def main():
        a, b = (make(redis_url, "crpm", [key("k", rpm=100)]) for _ in range(2))
        c = ClientSpec("team", "tok", rpm=5)
        got = await asyncio.gather(*[s.shared.reserve(s.by_name["k"], 10, ask(c))
                                     for _ in range(8) for s in (a, b)])
        slots = [s for s, w in got if s is not None]
        refused = [w for s, w in got if s is None]
        assert len(slots) == 5 and len(refused) == 11
        assert all(r.status == 429 and r.headers["x-keymux-error"] == "client_rate_limited"
                   and 0 < float(r.headers["retry-after"]) <= 60 for r in refused)
        # a client refused took nothing of the key: 5 in its rpm window, not 16
        assert await a.shared.client.zcard("crpm:rpm:k") == 5
        # a key without limits and no client part: no call is needed at all
        free = make(redis_url, "crpm", [key("free")])
        assert not free.shared.needs_slot(free.by_name["free"])
        assert free.shared.needs_slot(free.by_name["free"], ask(c))
        await stop(a, b, free)
    asyncio.run(main())


def test_a_client_budget_admits_within_the_bound_across_processes(redis_url):
    async def main():
        a, b = (make(redis_url, "budget", [key("k")]) for _ in range(2))
        c = ClientSpec("team", "tok", budget=Budget(daily_usd=5.0))
        got = await asyncio.gather(*[s.shared.reserve(s.by_name["k"], 0, ask(c, usd=1.0))
                                     for _ in range(10) for s in (a, b)])
        slots = [(s, p) for (s, w), p in zip(got, [a, b] * 10) if s is not None]
        refused = [w for s, w in got if s is None]
        assert len(slots) == 5  # exactly 5 holds of 1 USD fit under 5 USD
        assert all(r.headers["x-keymux-error"] == "budget_exceeded" for r in refused)
        assert "daily budget of 5 USD (5 USD spent or reserved)" in refused[0].body.decode()
        # a request over: its hold goes, its real cost counts as the process's spend
        slot, p = slots[0]
        wall = time.time()
        label = Ledger().label("day", wall)
        async with asyncio.timeout(5):
            pipe = p.shared.client.pipeline(transaction=False)
            p.shared.store_client_spent(pipe, label, "team", 0.25, 100, 60)
            await pipe.execute()
        p.shared.release_hold(slot.token)
        await p.shared._flush()
        # 4 held + 0.25 spent < 5: one more fits, then none
        assert (await b.shared.reserve(b.by_name["k"], 0, ask(c, usd=1.0)))[0] is not None
        slot, answer = await a.shared.reserve(a.by_name["k"], 0, ask(c, usd=1.0))
        assert slot is None and answer.status == 429
        await stop(a, b)
    asyncio.run(main())


def test_the_holds_of_a_dead_process_lapse(redis_url):
    async def main():
        dead = make(redis_url, "lapse", [key("k")], ttl=0.3)
        live = make(redis_url, "lapse", [key("k")], ttl=0.3)
        c = ClientSpec("team", "tok", budget=Budget(daily_tokens=1000))
        assert (await dead.shared.reserve(dead.by_name["k"], 0, ask(c, tokens=1000)))[0]
        # the holder never refreshes nor releases (killed): its hold lapses
        assert (await live.shared.reserve(live.by_name["k"], 0, ask(c, tokens=1)))[0] is None
        await asyncio.sleep(0.35)
        assert (await live.shared.reserve(live.by_name["k"], 0, ask(c, tokens=1)))[0]
        await stop(dead, live)
    asyncio.run(main())


def test_held_holds_are_refreshed_while_in_flight(redis_url):
    async def main():
        a = make(redis_url, "keephold", [key("k")], ttl=0.3)
        b = make(redis_url, "keephold", [key("k")], ttl=0.3)
        c = ClientSpec("team", "tok", budget=Budget(daily_tokens=1000))
        a.shared.start()
        try:
            slot, _ = await a.shared.reserve(a.by_name["k"], 0, ask(c, tokens=1000))
            await asyncio.sleep(0.6)  # twice the ttl: refreshed meanwhile, still held
            assert (await b.shared.reserve(b.by_name["k"], 0, ask(c, tokens=1)))[0] is None
            a.shared.release_hold(slot.token)
            deadline = time.monotonic() + 5
            while a.shared._out and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert (await b.shared.reserve(b.by_name["k"], 0, ask(c, tokens=1)))[0]
        finally:
            await stop(a, b)
    asyncio.run(main())


def test_unreachable_redis_leaves_the_client_to_the_local_checks():
    async def main():
        a = make("redis://127.0.0.1:1/0", "down", [key("k", tpm=100)])
        c = ClientSpec("team", "tok", rpm=1, budget=Budget(daily_tokens=10))
        assert await a.shared.reserve(a.by_name["k"], 50, ask(c, tokens=5)) == (None, 0.0)
        assert a.shared.status()["ok"] is False
        assert not a.shared.needs_slot(a.by_name["k"], ask(c))  # no round trip while down
        await stop(a)
    asyncio.run(main())
