"""keypool.shared_lua against a real redis-server: an attempt's hold against its key's
budget (daily_usd, monthly_usd) checked and taken in the one reserve call, with every
process's spend of the key and every hold on it: never past the limit whoever asks; holds
released after the attempt, lapsing when their process dies."""
import asyncio
import time

import pytest

from keypool.config_money import Budget
from keypool.shared_ask import KeyAsk

from tests.redisserver import needs_redis
from .helpers import key
from .test_shared_lua import make, patient, redis_url, stop  # noqa: F401 (fixtures)

pytestmark = needs_redis
DAY, MONTH = "2026-11-30", "2026-11"


def kask(usd, daily=0.0, monthly=0.0):
    return KeyAsk(usd, daily, monthly, DAY, MONTH, 3_600_000, 86_400_000)


def budgeted(url, prefix, ttl=30.0, **limits):
    return make(url, prefix, [key("k", budget=Budget(**limits)), key("free")], ttl=ttl)


async def spent(pool, label, usd):
    pipe = pool.shared.client.pipeline(transaction=False)
    pool.shared.store_client_spent(pipe, label, "k", usd, 0, 60, "key")
    await pipe.execute()


def test_a_key_budget_admits_within_the_bound_across_processes(redis_url):
    async def main():
        a, b = (budgeted(redis_url, "kb", daily_usd=5.0) for _ in range(2))
        assert a.shared.needs_slot(a.by_name["k"]) and not a.shared.needs_slot(a.by_name["free"])
        got = await asyncio.gather(*[s.shared.reserve(s.by_name["k"], 0, None, kask(1.0, 5.0))
                                     for _ in range(10) for s in (a, b)])
        slots = [s for s, _ in got if s is not None]
        assert len(slots) == 5  # exactly 5 holds of 1 USD fit under 5 USD
        assert {w for s, w in got if s is None} == {1.0}  # held by holds: try again soon
        # an attempt over: its spend is written, then its hold goes (off the hot path)
        slot = slots[0]
        owner = a if slot.token in a.shared._kholds else b
        await spent(owner, DAY, 0.25)
        owner.shared.release(slot)
        await asyncio.sleep(0)  # the release is queued after the caller's spend
        await owner.shared._flush()
        assert not owner.shared._kholds.get(slot.token)
        # 4 held + 0.25 spent < 5: one more fits, then none
        assert (await b.shared.reserve(b.by_name["k"], 0, None, kask(1.0, 5.0)))[0] is not None
        assert (await a.shared.reserve(a.by_name["k"], 0, None, kask(1.0, 5.0)))[0] is None
        await stop(a, b)
    asyncio.run(main())


def test_a_spent_key_waits_for_its_period_and_the_month_counts(redis_url):
    async def main():
        a, b = (budgeted(redis_url, "kbs", daily_usd=5.0, monthly_usd=8.0) for _ in range(2))
        await spent(a, DAY, 3.0)
        await spent(b, DAY, 2.0)  # 5 spent today across both: out until the day resets
        slot, wait = await a.shared.reserve(a.by_name["k"], 0, None, kask(0.1, 5.0, 8.0))
        assert slot is None and wait == 3600.0
        c = budgeted(redis_url, "kbm", daily_usd=5.0, monthly_usd=8.0)
        await spent(c, MONTH, 8.0)  # the month's: out until the month resets
        slot, wait = await c.shared.reserve(c.by_name["k"], 0, None, kask(0.1, 5.0, 8.0))
        assert slot is None and wait == 86400.0
        await stop(a, b, c)
    asyncio.run(main())


def test_key_holds_of_a_dead_process_lapse_and_live_ones_are_kept(redis_url):
    async def main():
        dead = budgeted(redis_url, "kblapse", ttl=0.3, daily_usd=1.0)
        live = budgeted(redis_url, "kblapse", ttl=0.3, daily_usd=1.0)
        assert (await dead.shared.reserve(dead.by_name["k"], 0, None, kask(1.0, 1.0)))[0]
        assert (await live.shared.reserve(live.by_name["k"], 0, None, kask(0.1, 1.0)))[0] is None
        await asyncio.sleep(0.35)  # never refreshed (killed): lapsed
        live.shared.start()
        try:
            slot, _ = await live.shared.reserve(live.by_name["k"], 0, None, kask(1.0, 1.0))
            assert slot is not None
            await asyncio.sleep(0.6)  # twice the ttl: refreshed meanwhile, still held
            assert (await dead.shared.reserve(dead.by_name["k"], 0, None,
                                              kask(0.1, 1.0)))[0] is None
            live.shared.release(slot)
            deadline = time.monotonic() + 5
            while (live.shared._kholds or live.shared._out) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert (await dead.shared.reserve(dead.by_name["k"], 0, None, kask(0.1, 1.0)))[0]
        finally:
            await stop(dead, live)
    asyncio.run(main())


def test_key_and_client_parts_in_one_call(redis_url):
    """A client budget and a key budget in the same reserve: the client refused takes
    nothing of the key's budget."""
    from keypool.config import ClientSpec
    from .test_shared_lua import ask
    async def main():
        a = budgeted(redis_url, "kbc", daily_usd=5.0)
        c = ClientSpec("team", "tok", budget=Budget(daily_usd=1.0))
        slot, _ = await a.shared.reserve(a.by_name["k"], 0, ask(c, usd=1.0), kask(1.0, 5.0))
        assert slot is not None
        slot2, answer = await a.shared.reserve(a.by_name["k"], 0, ask(c, usd=1.0), kask(1.0, 5.0))
        assert slot2 is None and answer.status == 429
        held = await a.shared.client.hget("kbc:kholdn:k", "_u")
        assert float(held) == pytest.approx(1.0)  # the refused one holds nothing
        await stop(a)
    asyncio.run(main())


def test_key_ask_for_a_budgeted_key_only():
    from keypool.budgets import Budgets
    from keypool.clock import SystemClock
    from keypool.shared_ask import key_ask_for
    from keypool.spend import Ledger
    from keypool.spend_sums import Hold
    from .helpers import config
    budgets = Budgets(Ledger(), SystemClock())
    budgets.update(config(keys=[key("k", budget=Budget(daily_usd=2.0)), key("free")]))
    hold = Hold(None, "app", 0.5)
    wall = time.time()
    ka = key_ask_for(budgets, "k", hold, wall)
    assert (ka.usd, ka.daily, ka.monthly) == (0.5, 2.0, 0)
    assert 0 < ka.day_ms <= 60_000 and 0 < ka.month_ms <= 60_000  # asks again within a minute
    assert key_ask_for(budgets, "free", hold, wall) is None
    assert key_ask_for(budgets, "k", None, wall) is None
