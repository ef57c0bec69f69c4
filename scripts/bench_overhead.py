#!/usr/bin/env python3
"""What keymux costs: the mock upstream direct, through plain mitmdump, through keymux.

All targets are measured in the same run, interleaved round by round (the order reversed
every other round), with wrk (Debian's ``wrk``) posting a small chat completion at
concurrency 1 and 16:

- ``direct``: the mock upstream itself; ``mitmdump``: plain mitmdump, reverse mode;
- ``keymux``: one worker, default state (SQLite);
- ``mitmdump-planned``: plain mitmdump with keymux's planned hook dispatch and nothing else
  (scripts/planned_hooks.py): what keymux's own work costs shows against this row;
- ``keymux-mitmhooks``: keymux with ``keymux_fast_hooks=false`` (mitmproxy's own dispatch);
- ``keymux-2w``: two workers on one port (SO_REUSEPORT, Redis state, as ``keymux run
  --workers 2`` starts them);
- ``keymux-redis``: one worker with ``state: {backend: redis}`` and keys with an rpm, so
  every attempt makes the shared reservation (one Redis round trip).

Prints requests/s and p50/p99 latency (medians over rounds), CPU time per request of the
target's whole process tree (plus redis-server's for the Redis rows, also shown alone;
from /proc around each wrk run: steadier than req/s on a shared machine), the ratios against plain mitmdump
and the p50 the Redis round trip adds (keymux-redis - keymux at c=1, per round, median).

    .venv/bin/python scripts/bench_overhead.py [--seconds 8] [--rounds 3] [--no-redis]

Targets (issues 2, 12): keymux keeps >= 90% of plain mitmdump's requests/s at c=16 and
adds < 0.2 ms at p50 at c=1; the Redis round trip adds < 0.3 ms at p50. Needs wrk; the
Redis rows need Debian's redis-server (skipped without it). Loopback only; every process it
starts is stopped by PID.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import (cpu_tree, free_port, keymux, mitmdump, planned, redis_server, start,
                      stop, two_workers, wait_up, write_keys)

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
RPM = 1_000_000  # high enough never to refuse: the reservation is made, never full
FIELDS = ("rps", "p50", "p99", "cpu_us", "redis_us", "non2xx")


def wait_post(url: str, proc: subprocess.Popen) -> None:
    wait_up(url, proc, timeout=30, data=BODY.encode(),
            headers={"content-type": "application/json",
                     "authorization": "Bearer sk-bench-0000000000000"})


def wrk(url: str, conns: int, seconds: int, script: Path, pids: list[int] = (),
        redis_pid: int | None = None) -> dict:
    """One wrk run; ``cpu_us``: CPU per request of the process trees ``pids`` (and of
    ``redis_pid``, also alone as ``redis_us``) meanwhile."""
    threads = 1 if conns == 1 else 2
    pids = [*pids, redis_pid] if redis_pid else pids
    cpu0, redis0 = sum(map(cpu_tree, pids)), cpu_tree(redis_pid) if redis_pid else 0.0
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = 1e6 * (sum(map(cpu_tree, pids)) - cpu0) / max(requests, 1) if pids else 0.0
    redis_us = 1e6 * (cpu_tree(redis_pid) - redis0) / max(requests, 1) if redis_pid else 0.0
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "cpu_us": cpu_us,
            "redis_us": redis_us, "non2xx": int(errors.group(1)) if errors else 0}


def post_script(tmp: Path) -> Path:
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n'
                      'wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000"\n')
    return script


def _ms(v: str) -> float:
    num, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def commands(tmp: Path, mock_port: int, redis_url: str | None) -> dict[str, list[str]]:
    """Target name -> the command that serves it on the port appended (``-p PORT``)."""
    py, mitm = sys.executable, mitmdump(sys.executable, tmp, mock_port)
    cmds = {"direct": [py, "-m", "keypool.demo.mock_upstream", "--port"],
            "mitmdump": mitm + ["-p"],
            "keymux": keymux(mitm, write_keys(tmp / "keys.yaml", mock_port)) + ["-p"],
            "mitmdump-planned": planned(mitm) + ["-p"],
            "keymux-mitmhooks": keymux(mitm, write_keys(tmp / "keys-mitmhooks.yaml", mock_port))
            + ["--set", "keymux_fast_hooks=false", "-p"]}
    if redis_url:  # keymux-redis right after keymux: the pair whose p50s are compared
        shared = write_keys(tmp / "shared.yaml", mock_port, rpm=RPM, state=redis_url)
        cmds["keymux-redis"] = keymux(mitm, shared) + ["-p"]
        fleet = write_keys(tmp / "fleet.yaml", mock_port, state=redis_url)
        cmds["keymux-2w"] = two_workers(py, keymux(mitm, fleet)) + ["-p"]
    return cmds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-redis", action="store_true", help="leave out the Redis rows")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="keymux-bench-"))
    script = post_script(tmp)
    redis = None if args.no_redis else redis_server()
    if redis is None and not args.no_redis:
        print("no redis-server: the keymux-2w and keymux-redis rows are left out", file=sys.stderr)
    with redis or contextlib.nullcontext():
        mock_port, procs, targets = free_port(), [], {}
        try:
            for name, cmd in commands(tmp, mock_port, redis and redis.url).items():
                port = mock_port if name == "direct" else free_port()
                procs.append(start(cmd + [str(port)], tmp / f"{name}.log"))
                # whose CPU a target's requests cost: its process tree, and Redis's
                targets[name] = (port, procs[-1].pid,
                                 redis.proc.pid if redis and name.startswith("keymux-") else None)
                wait_post(f"http://127.0.0.1:{port}/v1/chat/completions", procs[-1])
            results = {(t, c): [] for t in targets for c in (1, 16)}
            for r in range(args.rounds):
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for c in (1, 16):
                    for t in order:
                        port, pid, redis_pid = targets[t]
                        results[(t, c)].append(wrk(f"http://127.0.0.1:{port}/v1/chat/completions",
                                                   c, args.seconds, script, [pid], redis_pid))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            stop(procs)
    report(results, list(targets), args)


def report(results: dict, names: list[str], args) -> None:
    med = {k: {f: statistics.median(x[f] for x in v) for f in FIELDS} for k, v in results.items()}
    print(f"\nmedians of {args.rounds} rounds x {args.seconds}s, wrk POST /v1/chat/completions; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(f"{'path':<16} {'conc':>4} {'req/s':>8} {'x plain':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'cpu us/req':>10} {'x plain':>7} {'of it Redis':>11} {'non-2xx':>7}")
    for c in (1, 16):
        p = med[("mitmdump", c)]
        for t in names:
            m = med[(t, c)]
            print(f"{t:<16} {c:>4} {m['rps']:>8.0f} {m['rps'] / p['rps']:>7.3f} {m['p50']:>7.3f} "
                  f"{m['p99']:>7.3f} {m['cpu_us']:>10.0f} {m['cpu_us'] / p['cpu_us']:>7.3f} "
                  f"{m['redis_us']:>11.0f} {m['non2xx']:>7.0f}")
    for c in (1, 16):
        k, p = med[("keymux", c)], med[("mitmdump", c)]
        print(f"\nc={c}: keymux/mitmdump req/s = {k['rps'] / p['rps']:.3f}; "
              f"p50 {k['p50'] - p['p50']:+.3f} ms; p99 {k['p99'] - p['p99']:+.3f} ms; "
              f"CPU per request {k['cpu_us'] / p['cpu_us']:.3f}x")
        for a, b in (("keymux", "mitmdump"), ("keymux", "mitmdump-planned"),
                     ("keymux-mitmhooks", "mitmdump")):
            rps = [x["rps"] / y["rps"] for x, y in zip(results[(a, c)], results[(b, c)])]
            cpu = [x["cpu_us"] / y["cpu_us"] for x, y in zip(results[(a, c)], results[(b, c)])]
            print(f"  {a}/{b}, median of per-round ratios: req/s {statistics.median(rps):.3f}"
                  f" ({', '.join(f'{r:.2f}' for r in rps)}); CPU per request "
                  f"{statistics.median(cpu):.3f}x")
    if ("keymux-redis", 1) in results:
        # each round's pair ran back to back: the difference per round, then the median
        added = [r["p50"] - k["p50"] for r, k in zip(results[("keymux-redis", 1)],
                                                     results[("keymux", 1)])]
        print(f"Redis round trip (keymux-redis - keymux, c=1): added p50 "
              f"{statistics.median(added):+.3f} ms (rounds: "
              f"{', '.join(f'{a:+.3f}' for a in added)}; target < 0.3 ms)")
        for c in (1, 16):
            r, k = med[("keymux-redis", c)], med[("keymux", c)]
            print(f"c={c}: CPU per request keymux-redis - keymux = {r['cpu_us'] - k['cpu_us']:+.0f} us"
                  f" (redis-server's part {r['redis_us']:.0f} us)")
    if ("keymux-2w", 16) in results:
        print(f"c=16: keymux-2w/keymux req/s = "
              f"{med[('keymux-2w', 16)]['rps'] / med[('keymux', 16)]['rps']:.3f}")


if __name__ == "__main__":
    main()
