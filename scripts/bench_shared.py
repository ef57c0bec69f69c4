#!/usr/bin/env python3
"""What sharing the pool through Redis adds to a request (state: {backend: redis}).

1. In process: the p50/p99 of one shared reservation (the Lua check-and-reserve, one Redis
   round trip), the only Redis call on the request path: a key with rpm and in-flight, and
   the biggest call (the key's tpm too, and a client's rpm and budget hold).
2. End to end: sequential requests (keep-alive, one client) through keymux with the default
   state and with the Redis backend, on a key with an rpm limit (so every attempt reserves),
   alternated over rounds; the added p50 is the median over rounds of redis p50 - sqlite p50.

3. ``--redis-time``: Redis's own time per reserve call (``INFO commandstats``' EVALSHA
   usec_per_call), A/B over alternated rounds: a key with rpm and in-flight, the same with
   a key budget's hold too, a key with only a budget, and the biggest call with a key
   budget too; medians of the rounds. Nothing else is measured then.

Needs Debian's redis-server (started here on a free loopback port, stopped by PID).
Usage: .venv/bin/python scripts/bench_shared.py [--requests 600] [--rounds 3]
       .venv/bin/python scripts/bench_shared.py --redis-time [--rounds 9]
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "addons"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import ROOT, free_port, start, stop, wait_up  # noqa: E402
from tests.redisserver import RedisServer  # noqa: E402

BIN = Path(sys.executable).parent
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def reserve_times(url: str, n: int, full: bool = False, kbudget: bool = False,
                        limits: bool = True) -> list[float]:
    """``full``: the biggest call: the key's rpm, in-flight and tpm, and the client's rpm
    and budget hold (the first attempt of a client with both, keypool.shared_lua);
    ``kbudget``: the key's budget hold too; ``limits`` False: the key has no rpm/in-flight."""
    from keypool.budgets import Budgets
    from keypool.clock import SystemClock
    from keypool.config import ClientSpec, Config, KeySpec, StateSpec
    from keypool.config_money import Budget
    from keypool.pool import Pool
    from keypool.providers import PRESETS
    from keypool.shared_ask import KeyAsk, ask_for
    from keypool.shared_redis import RedisState
    from keypool.spend import Hold, Ledger
    spec = KeySpec(name="b", provider="openai", secret="sk-bench-00000000",
                   rpm=10**9 if limits else None, max_in_flight=10**6 if limits else None,
                   tpm=10**12 if full else None,
                   budget=Budget(daily_usd=1e9, monthly_usd=1e10) if kbudget else None)
    pool = Pool(Config(providers=dict(PRESETS), keys=(spec,)), SystemClock())
    state = RedisState(StateSpec("redis", url, "bench", 30.0), pool, Ledger())
    state.ok = True
    client = ClientSpec("c", "t", rpm=10**9, budget=Budget(daily_usd=1e9, daily_tokens=10**12))
    budgets = Budgets(state.ledger, SystemClock())
    key, out = pool.by_name["b"], []
    for _ in range(n):
        ask = ask_for(client, Hold(None, "c", 0.0012, tokens=300), budgets, time.time(),
                      False) if full else None
        kask = KeyAsk(0.0012, 1e9, 1e10, "2026-11-30", "2026-11", 3_600_000,
                      86_400_000) if kbudget else None
        t0 = time.perf_counter()
        slot, _ = await (state.reserve(key, 300, ask, kask) if kask else
                         state.reserve(key, 300, ask))
        out.append(time.perf_counter() - t0)
        state.release(slot, 200)
        if kask is not None:
            await asyncio.sleep(0)  # the key hold's release is queued after the spend
        if ask is not None:
            state.release_hold(slot.token)
        await state._flush()
    await state.stop()
    return out


def sequential(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        out.append(time.perf_counter() - t0)
        assert r.status == 200, r.status
    conn.close()
    return out


REDIS_VARIANTS = {  # name -> reserve_times' options
    "key rpm+in-flight": {},
    "key rpm+in-flight + key budget hold": {"kbudget": True},
    "key budget hold only": {"kbudget": True, "limits": False},
    "biggest (tpm, client rpm+budget)": {"full": True},
    "biggest + key budget hold": {"full": True, "kbudget": True},
}


def redis_time(url: str, rounds: int, n: int = 2000) -> None:
    """Redis's own microseconds per reserve call (EVALSHA), per variant, alternated."""
    import redis as redis_py
    r = redis_py.Redis.from_url(url)
    got: dict[str, list[float]] = {v: [] for v in REDIS_VARIANTS}
    for i in range(rounds):
        for name, opts in REDIS_VARIANTS.items():
            r.config_resetstat()
            asyncio.run(reserve_times(url, n, **opts))
            got[name].append(float(r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]))
        print(f"round {i + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in got.items()),
              file=sys.stderr)
    for name, v in got.items():
        print(f"Redis time per reserve call, {name}: {statistics.median(v):.1f} us "
              f"(median of {rounds} alternated rounds of {n} calls)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-limit", action="store_true",
                    help="the key has no rpm: no reservation, only the backend's presence")
    ap.add_argument("--redis-time", action="store_true",
                    help="only Redis's own time per reserve call, per variant (A/B)")
    args = ap.parse_args()
    if args.redis_time:
        with RedisServer() as redis:
            redis_time(redis.url, args.rounds)
        return
    tmp = Path(tempfile.mkdtemp(prefix="keymux-bench-shared-"))
    with RedisServer() as redis:
        for full in (False, True):
            times = asyncio.run(reserve_times(redis.url, 2000, full))
            what = ("key rpm+in-flight+tpm, client rpm+budget hold" if full
                    else "key rpm+in-flight")
            print(f"shared reservation (Lua, one round trip; {what}): p50 "
                  f"{pct(times, .5) * 1e3:.3f} ms, p99 {pct(times, .99) * 1e3:.3f} ms")
        mock_port = free_port()
        rpm = "" if args.no_limit else ", rpm: 1000000"
        key = f"  - {{name: b, provider: mock, key: sk-bench-key-000000000001{rpm}}}\n"
        base = f"providers:\n  mock:\n    base_url: http://127.0.0.1:{mock_port}/v1\nkeys:\n{key}"
        ports, procs = {}, [start([sys.executable, "-m", "keypool.demo.mock_upstream", "--port",
                                   str(mock_port)], tmp / "mock.log")]
        for name, extra in (("sqlite", ""), ("redis", f"state: {{backend: redis, url: "
                                                        f"{redis.url}, prefix: bench}}\n")):
            (tmp / name).mkdir()
            (tmp / name / "keys.yaml").write_text(base + extra)
            ports[name] = free_port()
            procs.append(start([str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "-q",
                                "--mode", f"reverse:http://127.0.0.1:{mock_port}",
                                "--set", f"confdir={tmp}", "-p", str(ports[name]),
                                "-s", str(ROOT / "addons/keymux.py"),
                                "--set", f"keymux_config={tmp / name / 'keys.yaml'}"],
                               tmp / f"{name}.log"))
        try:
            for (name, port), proc in zip(ports.items(), procs[1:]):
                wait_up(f"http://127.0.0.1:{port}/health", proc)
                sequential(port, 100)  # warm up
            p50s = {n: [] for n in ports}
            for r in range(args.rounds):
                for name, port in ports.items():
                    p50s[name].append(statistics.median(sequential(port, args.requests)))
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{n} p50 {v[-1] * 1e3:.3f} ms" for n, v in p50s.items()), file=sys.stderr)
        finally:
            stop(procs)
    added = statistics.median(b - a for a, b in zip(p50s["sqlite"], p50s["redis"]))
    print(f"end to end, sequential: sqlite p50 {statistics.median(p50s['sqlite']) * 1e3:.3f} ms,"
          f" redis p50 {statistics.median(p50s['redis']) * 1e3:.3f} ms, added p50 "
          f"{added * 1e3:.3f} ms (median of {args.rounds} alternated rounds)")


if __name__ == "__main__":
    main()
