"""mitm/heap.py: one collection at start, then the start-up heap out of the GC's sight."""
import asyncio
import gc
import time
import weakref

import pytest

from keypool.mitm import heap

from .conftest import glue_keys_yaml, keymux_in


@pytest.fixture(autouse=True)
def thawed():
    yield
    gc.unfreeze()  # the rest of the test session collects as usual


class Node:
    pass


def cycle() -> weakref.ref:
    n = Node()
    n.me = n  # only the cyclic collector frees it
    return weakref.ref(n)


def test_settle_collects_the_cycles_alive_then_freezes_the_rest():
    garbage, kept = cycle(), Node()
    heap.settle()
    assert garbage() is None  # collected before the freeze: not kept for good
    assert gc.get_freeze_count() > 1000 and gc.get_count()[2] == 0
    assert gc.is_tracked(kept)


def test_a_second_settle_collects_what_the_first_froze():
    """A script reload: the old script's module graph is a cycle frozen by the first."""
    heap.settle()
    gc.unfreeze()
    ref = cycle()
    gc.freeze()  # the cycle is frozen now, as the old script's would be
    heap.settle()
    assert ref() is None


def test_running_warms_the_price_table_then_settles(tmp_path, monkeypatch):
    from keypool import prices
    config = tmp_path / "keys.yaml"
    config.write_text(glue_keys_yaml("http://127.0.0.1:9", extra=f"state_dir: {tmp_path}"))
    warmed = []
    monkeypatch.setattr(prices, "warm", lambda: warmed.append(gc.get_freeze_count()))
    gc.unfreeze()

    async def main():
        async with keymux_in(config) as (km, tctx):
            km.running()
            deadline = time.monotonic() + 30
            while gc.get_freeze_count() == 0:
                assert time.monotonic() < deadline, "never settled"
                await asyncio.sleep(0.01)
            assert warmed == [0]  # the table was loaded before the freeze, not after
            assert gc.get_freeze_count() > 1000
            km.done()
    asyncio.run(main())


def test_warm_loads_genai_prices_table(monkeypatch):
    from genai_prices import data_snapshot

    from keypool import prices
    loaded = []
    monkeypatch.setattr(data_snapshot, "get_snapshot", lambda: loaded.append(1))
    prices.warm()
    assert loaded == [1]
