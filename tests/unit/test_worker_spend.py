"""Budgets' spend totals shared through a real redis-server by processes that share one
SQLite store (workers of `keymux run --workers`, origins ORIGIN/wN) or own one alone: each
pushes its own total (its earlier total in Redis + what it spent since start), never the
store's restored history; a budget counts run + max(restored, own base + others)."""
import asyncio
import datetime as dt
import time

import pytest

from keypool.budgets import Budgets
from keypool.clock import SystemClock
from keypool.config import StateSpec
from keypool.config_money import Budget
from keypool.pool import Pool
from keypool.spend import Ledger
from keypool.usage import Usage

from tests.redisserver import RedisServer, needs_redis
from .helpers import config, key, until

pytestmark = needs_redis
WALL = time.time()


@pytest.fixture(scope="module")
def server():
    with RedisServer() as s:
        yield s


def row(ledger, usd, tokens_out=0, client="app"):
    """A spend_day row of today, as the SQLite store hands it to Ledger.restore."""
    return {"day": ledger.label("day", WALL), "key": "k", "client": client, "provider": "p",
            "model": "m", "usd": usd, "requests": 1, "tokens_in": 0, "tokens_out": tokens_out}


class Node:
    """One process: its pool, ledger (restored from ``history``), budgets and RedisState,
    wired as keypool.mitm.runtime does."""

    def __init__(self, url, prefix, origin, history=()):
        from keypool.shared_redis import RedisState
        self.pool = Pool(config(keys=[key("k")]), SystemClock())
        self.ledger = Ledger(self.pool.periods)
        self.ledger.restore([row(self.ledger, *h) for h in history])
        self.budgets = Budgets(self.ledger, self.pool.clock)
        self.budgets.clients = {"app": Budget(daily_usd=100.0)}
        self.state = RedisState(StateSpec("redis", url, prefix, 30.0), self.pool, self.ledger,
                                origin)
        self.budgets.shared = self.state
        self.state.push_spend = lambda: self.budgets.share("", "app", WALL)

    def spend(self, usd, tokens=0):
        self.ledger.add(WALL, "k", "app", "p", "m", usd, Usage(output=tokens, seen=True))
        self.budgets.share("k", "app", WALL)

    def spent(self):
        return self.ledger.spent("client", "app", "day", WALL)

    def redis_total(self):
        """Every origin's total of the client today, as RESERVE sums it."""
        h = f"{self.state.prefix}:cspent:{self.ledger.label('day', WALL)}:app"
        return self.state.client.hgetall(h)




async def started(*nodes):
    for n in nodes:
        n.state.start()
    assert await until(lambda: all(n.state.ok for n in nodes))


async def stop(*nodes):
    for n in nodes:
        await n.state.stop()


async def totals(node) -> dict[str, float]:
    return {k.decode(): float(v.split()[0]) for k, v in (await node.redis_total()).items()}


def test_two_workers_of_one_store_count_its_history_once_and_each_others_spend(server):
    async def main():
        # the store holds 3.0 (spent before: in Redis already, under w1 and w2)
        seed1, seed2 = Node(server.url, "ws1", "s/w1"), Node(server.url, "ws1", "s/w2")
        await started(seed1, seed2)
        seed1.spend(2.0)
        seed2.spend(1.0)
        assert await until(lambda: seed1.spent() == pytest.approx(3.0)
                           and seed2.spent() == pytest.approx(3.0))
        await stop(seed1, seed2)
        # both restart: each restores the whole store (3.0), neither pushes it
        w1 = Node(server.url, "ws1", "s/w1", [(2.0,), (1.0,)])
        w2 = Node(server.url, "ws1", "s/w2", [(2.0,), (1.0,)])
        assert w1.spent() == pytest.approx(3.0)  # Redis not reached yet: the local figures
        await started(w1, w2)
        assert w1.spent() == pytest.approx(3.0) and w2.spent() == pytest.approx(3.0)
        w1.spend(0.5)
        w2.spend(0.25)
        assert await until(lambda: w1.spent() == pytest.approx(3.75)
                           and w2.spent() == pytest.approx(3.75))
        # each origin's own total: its earlier one + this run's; RESERVE's sum is the fleet's
        assert await totals(w1) == pytest.approx({"s/w1": 2.5, "s/w2": 1.25})
        await stop(w1, w2)
    asyncio.run(main())


def test_a_restarted_worker_goes_on_from_its_own_total(server):
    async def main():
        w1, w2 = Node(server.url, "ws2", "s/w1"), Node(server.url, "ws2", "s/w2")
        await started(w1, w2)
        w1.spend(2.0)
        w2.spend(1.0)
        assert await until(lambda: w2.spent() == pytest.approx(3.0))
        await stop(w1)
        w1b = Node(server.url, "ws2", "s/w1", [(2.0,), (1.0,)])  # the same slot, again
        await started(w1b)
        assert await until(lambda: w1b.spent() == pytest.approx(3.0))
        w1b.spend(1.0)
        assert await until(lambda: w2.spent() == pytest.approx(4.0))
        assert w1b.spent() == pytest.approx(4.0)
        assert await totals(w2) == pytest.approx({"s/w1": 3.0, "s/w2": 1.0})
        await stop(w1b, w2)
    asyncio.run(main())


def test_a_sole_process_claims_its_store_history_redis_lacks(server):
    async def main():
        # a single-process SQLite install moved to Redis mid-period: its history counts
        # for the others too (as before); a restart then goes on from its own total
        solo = Node(server.url, "ws3", "solo", [(3.0,)])
        other = Node(server.url, "ws3", "elsewhere")
        await started(solo, other)
        assert await until(lambda: other.spent() == pytest.approx(3.0))
        solo.spend(1.0)
        assert await until(lambda: other.spent() == pytest.approx(4.0))
        await stop(solo)
        again = Node(server.url, "ws3", "solo", [(3.0,), (1.0,)])
        await started(again)
        assert again.spent() == pytest.approx(4.0)
        assert await totals(other) == pytest.approx({"solo": 4.0, "elsewhere": 0.0})
        await stop(again, other)
    asyncio.run(main())


def test_workers_then_one_process_on_the_same_store_count_once(server):
    async def main():
        w1, w2 = Node(server.url, "ws4", "s/w1"), Node(server.url, "ws4", "s/w2")
        await started(w1, w2)
        w1.spend(2.0)
        w2.spend(1.0)
        assert await until(lambda: w1.spent() == pytest.approx(3.0))
        await stop(w1, w2)
        # the same store run without --workers: what the workers' rows hold is theirs
        solo = Node(server.url, "ws4", "s", [(2.0,), (1.0,)])
        await started(solo)
        assert solo.spent() == pytest.approx(3.0)
        assert await totals(solo) == pytest.approx({"s/w1": 2.0, "s/w2": 1.0, "s": 0.0})
        await stop(solo)
    asyncio.run(main())


def test_workers_moved_to_redis_mid_period_count_their_history_locally(server):
    async def main():
        # the store's history is in no Redis row: never pushed (every worker restored it),
        # but each worker counts it once, with every worker's spend since
        w1 = Node(server.url, "ws5", "s/w1", [(3.0,)])
        w2 = Node(server.url, "ws5", "s/w2", [(3.0,)])
        await started(w1, w2)
        assert w1.spent() == pytest.approx(3.0)
        w1.spend(1.0)
        w2.spend(2.0)
        assert await until(lambda: w1.spent() == pytest.approx(6.0)
                           and w2.spent() == pytest.approx(6.0))
        assert await totals(w1) == pytest.approx({"s/w1": 1.0, "s/w2": 2.0})
        await stop(w1, w2)
    asyncio.run(main())


def test_never_reached_redis_counts_the_local_figures_and_pushes_nothing():
    async def main():
        n = Node("redis://127.0.0.1:1/0", "ws6", "s/w1", [(3.0,)])
        n.state.start()
        n.spend(1.0)
        assert n.spent() == pytest.approx(4.0)
        assert not any(i[0] == "spend" for i in n.state._out)
        await stop(n)
    asyncio.run(main())


def test_redis_restarted_empty_gets_each_process_total_again():
    async def main(server):
        w1 = Node(server.url, "ws7", "s/w1", [(3.0,)])
        w2 = Node(server.url, "ws7", "s/w2", [(3.0,)])
        await started(w1, w2)
        w1.spend(1.0)
        w2.spend(2.0)
        assert await until(lambda: w1.spent() == pytest.approx(6.0)
                           and w2.spent() == pytest.approx(6.0))
        server.stop()
        assert await until(lambda: not w1.state.ok and not w2.state.ok)
        server.start()
        assert await until(lambda: w1.state.ok and w2.state.ok, timeout=10)

        async def back():
            return await totals(w1) == pytest.approx({"s/w1": 1.0, "s/w2": 2.0})
        assert await until(back)
        assert w1.spent() == pytest.approx(6.0) and w2.spent() == pytest.approx(6.0)
        await stop(w1, w2)

    with RedisServer() as s:
        asyncio.run(main(s))


def test_own_totals_start_over_when_the_period_rolls_over():
    wall = dt.datetime(2026, 11, 15, 12, tzinfo=dt.timezone.utc).timestamp()
    ledger = Ledger()
    ledger.restore([{**row(ledger, 3.0, 30), "day": ledger.label("day", wall)}])
    day, month = ledger.label("day", wall), ledger.label("month", wall)
    assert (day, month) == ("2026-11-15", "2026-11")
    ledger.set_base({(day, "client", "app"): (2.0, 20), (month, "client", "app"): (2.0, 20)},
                    {(day, "client", "app"): (0.5, 5), (month, "client", "app"): (0.5, 5)},
                    False, wall)  # 0.5 of the store's 3.0 in no Redis row
    ledger.add(wall, "k", "app", "p", "m", 1.0, Usage(output=10, seen=True))
    assert ledger.own("client", "app", "day", wall) == (pytest.approx(3.0), 30)
    # own 3.0 + the 0.5 in no row (+ the siblings' 0.5, once adopted from Redis)
    assert ledger.spent("client", "app", "day", wall) == pytest.approx(3.5)
    ledger.remote[(day, "client", "app")] = {"s/w2": (0.5, 5)}
    assert ledger.spent("client", "app", "day", wall) == pytest.approx(4.0)
    tomorrow = wall + 86400
    ledger.add(tomorrow, "k", "app", "p", "m", 0.5, Usage(output=5, seen=True))
    assert ledger.own("client", "app", "day", tomorrow) == (pytest.approx(0.5), 5)
    assert ledger.spent("client", "app", "day", tomorrow) == pytest.approx(0.5)
    assert ledger.own("client", "app", "month", tomorrow) == (pytest.approx(3.5), 35)
    assert ledger.spent("client", "app", "month", tomorrow) == pytest.approx(4.0)
