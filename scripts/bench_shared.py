#!/usr/bin/env python3
"""What sharing the pool through Redis adds to a request (state: {backend: redis}).

1. In process: the p50/p99 of one shared reservation (the Lua check-and-reserve, one Redis
   round trip), the only Redis call on the request path: a key with rpm and in-flight, and
   the biggest call (the key's tpm too, and a client's rpm and budget hold); and the client
   side's own cost: keymux's Lane (a bare asyncio Protocol) against PooledLane (redis-py's
   connection, the Lane before; still the fallback), both calling a trivial script.
2. End to end: sequential requests (keep-alive, one client) through keymux with the default
   state and with the Redis backend, on a key with an rpm limit (so every attempt reserves),
   alternated over rounds; the added p50 is the median over rounds of redis p50 - sqlite p50.

3. ``--redis-time``: Redis's own time per reserve call (``INFO commandstats``' EVALSHA
   usec_per_call), A/B over alternated rounds: a key with rpm and in-flight, the same with
   a key budget's hold too, a key with only a budget, and the biggest call with a key
   budget too; medians of the rounds. Nothing else is measured then.

With hiredis installed (redis-py then parses with it), each figure is also measured without
it in the same run (a child process in which ``import hiredis`` fails): ``redis-nohiredis``.
Needs Debian's redis-server (started here on a free loopback port, stopped by PID).
Usage: .venv/bin/python scripts/bench_shared.py [--requests 600] [--rounds 3] [--calls 2000]
       .venv/bin/python scripts/bench_shared.py --redis-time [--rounds 9]
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "addons"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import (ROOT, free_port, keymux, mitmdump, start, stop, wait_up,  # noqa: E402
                      write_keys)
from tests.redisserver import RedisServer  # noqa: E402

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def reserve_times(url: str, n: int, full: bool = False, kbudget: bool = False,
                        limits: bool = True, pooled: bool = False) -> list[float]:
    """``full``: the biggest call: the key's rpm, in-flight and tpm, and the client's rpm
    and budget hold (the first attempt of a client with both, keypool.shared_lua);
    ``kbudget``: the key's budget hold too; ``limits`` False: the key has no rpm/in-flight;
    ``pooled``: on redis-py's lane (PooledLane, the lane before the Protocol one)."""
    from keypool.budgets import Budgets
    from keypool.clock import SystemClock
    from keypool.config import ClientSpec, Config, KeySpec, StateSpec
    from keypool.config_money import Budget
    from keypool.pool import Pool
    from keypool.providers import PRESETS
    from keypool.shared_ask import KeyAsk, ask_for
    from keypool.shared_redis import RedisState
    from keypool.spend import Ledger
    from keypool.spend_sums import Hold
    spec = KeySpec(name="b", provider="openai", secret="sk-bench-00000000",
                   rpm=10**9 if limits else None, max_in_flight=10**6 if limits else None,
                   tpm=10**12 if full else None,
                   budget=Budget(daily_usd=1e9, monthly_usd=1e10) if kbudget else None)
    pool = Pool(Config(providers=dict(PRESETS), keys=(spec,)), SystemClock())
    state = RedisState(StateSpec("redis", url, "bench", 30.0), pool, Ledger())
    state.ok = True
    if pooled:
        from keypool.shared_lane_pooled import PooledLane
        from keypool.shared_lua import RESERVE
        state._lane = PooledLane(state.client.connection_pool, RESERVE)
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


# -- the client side of the call: the Protocol lane against redis-py's --

TRIVIAL = "return {1, 0}"  # both lanes run this: the difference is the client side alone


async def lane_times(url: str, n: int) -> dict[str, tuple[list[float], float]]:
    """keymux's Lane (a bare asyncio Protocol) and PooledLane (redis-py's connection and a
    reader task, the Lane before it and still the fallback), each calling TRIVIAL with a
    reserve's arguments, alternated in blocks of 250 calls: name -> (each call's wall time,
    CPU per call)."""
    import redis.asyncio as aioredis
    from keypool.shared_lane import make_lane
    from keypool.shared_lane_pooled import PooledLane
    pool = aioredis.ConnectionPool.from_url(url)
    lanes = {"Lane": make_lane(pool, TRIVIAL), "PooledLane": PooledLane(pool, TRIVIAL)}
    args = (2, "bench:rpm:b", "bench:inf:b", 1000000, 0)
    out = {name: [] for name in lanes}
    cpu = dict.fromkeys(out, 0.0)  # this process's CPU: steadier than wall time when shared
    for block in range(max(2, 2 * n // 250)):
        name = "Lane" if block % 2 == 0 else "PooledLane"
        call = lanes[name].call
        c0 = time.process_time()
        for i in range(250):
            t0 = time.perf_counter()
            await call(*args, f"tok:{i}", 30000)
            out[name].append(time.perf_counter() - t0)
        cpu[name] += time.process_time() - c0
    for lane in lanes.values():
        await lane.close()
    await pool.disconnect()
    return {name: (times, cpu[name] / len(times)) for name, times in out.items()}


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


def parser() -> str:
    import redis.utils
    return "hiredis" if redis.utils.HIREDIS_AVAILABLE else "python"


def in_process(url: str, n: int) -> None:
    """The reservation through RedisState.reserve, and the two lanes' client cost."""
    for full in (False, True):
        what = "key rpm+in-flight+tpm, client rpm+budget hold" if full else "key rpm+in-flight"
        got: dict[bool, list] = {False: [], True: []}
        for r in range(4):  # Lane and PooledLane alternated: medians of each one's runs
            for pooled in ((False, True) if r % 2 == 0 else (True, False)):
                times = asyncio.run(reserve_times(url, n // 2, full, pooled=pooled))
                got[pooled].append((pct(times, .5), pct(times, .99)))
        for pooled, runs in got.items():
            p50, p99 = (statistics.median(x[i] for x in runs) * 1e3 for i in (0, 1))
            print(f"[{parser()} parser] shared reservation (Lua, one round trip; {what}) on "
                  f"{'PooledLane' if pooled else 'Lane'}: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    for name, (t, cpu) in asyncio.run(lane_times(url, n)).items():
        print(f"[{parser()} parser] {name:<10} calling '{TRIVIAL}': p50 {pct(t, .5) * 1e6:.0f} us, "
              f"p99 {pct(t, .99) * 1e6:.0f} us, this process's CPU {cpu * 1e6:.1f} us a call")


def without_hiredis(tmp: Path) -> dict:
    """An environment in which ``import hiredis`` fails: redis-py falls back to its parser."""
    shim = tmp / "nohiredis"
    shim.mkdir(exist_ok=True)
    (shim / "hiredis.py").write_text('raise ImportError("left out for an A/B run")\n')
    return {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2000, help="in-process reservations")
    ap.add_argument("--no-limit", action="store_true",
                    help="the key has no rpm: no reservation, only the backend's presence")
    ap.add_argument("--redis-time", action="store_true",
                    help="only Redis's own time per reserve call, per variant (A/B)")
    ap.add_argument("--in-process", metavar="URL", help=argparse.SUPPRESS)  # the A/B's child
    args = ap.parse_args()
    if args.in_process:
        return in_process(args.in_process, args.calls)
    if args.redis_time:
        with RedisServer() as redis:
            redis_time(redis.url, args.rounds)
        return
    tmp = Path(tempfile.mkdtemp(prefix="keymux-bench-shared-"))
    ab = parser() == "hiredis"  # then each figure also without it, same run
    with RedisServer() as redis:
        in_process(redis.url, args.calls)
        if ab:
            subprocess.run([sys.executable, __file__, "--in-process", redis.url, "--calls",
                            str(args.calls)], env=without_hiredis(tmp), check=True)
        mock_port = free_port()
        mitm = mitmdump(sys.executable, tmp, mock_port)
        rpm = None if args.no_limit else 1_000_000
        cmds = {"sqlite": keymux(mitm, write_keys(tmp / "sqlite.yaml", mock_port, rpm=rpm, n=1)),
                "redis": keymux(mitm, write_keys(tmp / "bench.yaml", mock_port, rpm=rpm, n=1,
                                                 state=redis.url))}
        if ab:
            cmds["redis-nohiredis"] = keymux(mitm, write_keys(
                tmp / "nohiredis.yaml", mock_port, rpm=rpm, n=1, state=redis.url))
        ports, procs = {}, [start([sys.executable, "-m", "keypool.demo.mock_upstream", "--port",
                                   str(mock_port)], tmp / "mock.log")]
        for name, cmd in cmds.items():
            ports[name] = free_port()
            env = without_hiredis(tmp) if name == "redis-nohiredis" else None
            procs.append(subprocess.Popen(cmd + ["-p", str(ports[name])], cwd=ROOT, env=env,
                                          stdout=open(tmp / f"{name}.log", "wb"),
                                          stderr=subprocess.STDOUT))
        try:
            for (name, port), proc in zip(ports.items(), procs[1:]):
                wait_up(f"http://127.0.0.1:{port}/health", proc)
                sequential(port, 100)  # warm up
            p50s = {n: [] for n in ports}
            for r in range(args.rounds):
                for name in (list(ports) if r % 2 == 0 else list(reversed(ports))):
                    p50s[name].append(statistics.median(sequential(ports[name], args.requests)))
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{n} p50 {v[-1] * 1e3:.3f} ms" for n, v in p50s.items()), file=sys.stderr)
        finally:
            stop(procs)
    print(f"end to end, sequential ({args.requests} requests x {args.rounds} alternated rounds; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}): " + ", ".join(
              f"{n} p50 {statistics.median(v) * 1e3:.3f} ms" for n, v in p50s.items()))
    for name in ports:
        if name != "sqlite":
            # each round's pair ran back to back: the difference per round, then the median
            added = [b - a for a, b in zip(p50s["sqlite"], p50s[name])]
            print(f"{name}: added p50 {statistics.median(added) * 1e3:+.3f} ms (rounds: "
                  f"{', '.join(f'{x * 1e3:+.3f}' for x in added)}; target < 0.3 ms)")


if __name__ == "__main__":
    main()
