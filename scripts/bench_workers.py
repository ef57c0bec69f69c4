#!/usr/bin/env python3
"""One port, several keymux workers: SO_REUSEPORT against HAProxy, measured side by side.

Targets, all in the same run, interleaved round by round (wrk POST of a small chat
completion, like scripts/bench_overhead.py): plain mitmdump; keymux, 1 worker; keymux,
2 workers sharing the port with SO_REUSEPORT (``keymux run --workers 2``); keymux, 1 and
2 workers behind HAProxy (tcp mode, leastconn, the config ``keypool.workers`` writes).
Prints req/s and p50/p99 (medians over rounds) and the ratios against plain mitmdump.

    .venv/bin/python scripts/bench_workers.py [--seconds 6] [--rounds 3] [--conns 16,64]

Needs wrk and haproxy (Debian packages). Loopback only; every process is stopped by PID.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_overhead import BODY, wait_post, wrk
from benchlib import ROOT, free_port, start, stop

sys.path.insert(0, str(ROOT / "addons"))
from keypool.workers import haproxy_config  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", default="16,64")
    args = ap.parse_args()
    conns = [int(c) for c in args.conns.split(",")]
    for tool in ("wrk", "haproxy"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool}: apt-get install {tool}")
    tmp = Path(tempfile.mkdtemp(prefix="keymux-bench-workers-"))
    script = tmp / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.body = [[' + BODY + ']]\n'
                      'wrk.headers["Content-Type"] = "application/json"\n'
                      'wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000"\n')
    mock_port = free_port()
    config = tmp / "keys.yaml"
    keys = "\n".join(f"  - {{name: bench-{i}, provider: mock, key: sk-bench-key-{i:012d}}}"
                     for i in range(4))
    config.write_text(f"providers:\n  mock:\n    base_url: http://127.0.0.1:{mock_port}/v1\n"
                      f"keys:\n{keys}\n"
                      # behind HAProxy a worker sees the front port in Host
                      "server: {allowed_hosts: [127.0.0.1]}\n")
    mitm = [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "-q",
            "--mode", f"reverse:http://127.0.0.1:{mock_port}", "--set", f"confdir={tmp}"]
    kmx = mitm + ["-s", str(ROOT / "addons/keymux.py"), "--set", f"keymux_config={config}",
                  "--set", "flow_detail=0", "--set", "termlog_verbosity=alert"]
    procs = [start([sys.executable, "-m", "keypool.demo.mock_upstream", "--port", str(mock_port)],
                   tmp / "mock.log")]
    targets: dict[str, int] = {}
    pids: dict[str, list[int]] = {}   # the processes whose CPU a target's requests cost

    def worker(port: int, log: str, reuse: bool = False) -> None:
        cmd = [sys.executable, "-m", "keypool.mitm.reuseport", *kmx[1:]] if reuse else kmx
        p = subprocess.Popen(cmd + ["-p", str(port)], stdout=open(tmp / log, "wb"),
                             stderr=subprocess.STDOUT, cwd=ROOT)
        procs.append(p)
        pids.setdefault(port, []).append(p.pid)
        wait_post(f"http://127.0.0.1:{port}/v1/chat/completions", p)

    try:
        wait_post(f"http://127.0.0.1:{mock_port}/v1/chat/completions", procs[0])
        targets["mitmdump"] = free_port()
        procs.append(start(mitm + ["-p", str(targets["mitmdump"])], tmp / "plain.log"))
        pids[targets["mitmdump"]] = [procs[-1].pid]
        wait_post(f"http://127.0.0.1:{targets['mitmdump']}/v1/chat/completions", procs[-1])
        targets["keymux-1"] = free_port()
        worker(targets["keymux-1"], "k1.log")
        targets["reuseport-2"] = free_port()
        worker(targets["reuseport-2"], "r1.log", reuse=True)
        worker(targets["reuseport-2"], "r2.log", reuse=True)
        for n in (1, 2):
            internal = [free_port() for _ in range(n)]
            for i, port in enumerate(internal):
                worker(port, f"h{n}-{i}.log")
            front = free_port()
            cfg = tmp / f"haproxy-{n}.cfg"
            cfg.write_text(haproxy_config("127.0.0.1", front, internal))
            procs.append(start(["haproxy", "-db", "-f", str(cfg)], tmp / f"haproxy-{n}.log"))
            pids[front] = [procs[-1].pid] + [q for p in internal for q in pids[p]]
            wait_post(f"http://127.0.0.1:{front}/v1/chat/completions", procs[-1])
            targets[f"haproxy-{n}"] = front
        results = {(t, c): [] for t in targets for c in conns}
        for r in range(args.rounds):
            for c in conns:
                for t, port in targets.items():
                    results[(t, c)].append(wrk(f"http://127.0.0.1:{port}/v1/chat/completions",
                                               c, args.seconds, script, pids[port]))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        stop(procs)
    report(results, conns, args)


def report(results: dict, conns: list[int], args) -> None:
    med = {k: {f: statistics.median(x[f] for x in v) for f in ("rps", "p50", "p99", "non2xx", "cpu_us")}
           for k, v in results.items()}
    print(f"\nmedians of {args.rounds} rounds x {args.seconds}s, wrk POST /v1/chat/completions\n")
    print(f"{'path':<12} {'conc':>4} {'req/s':>8} {'x plain':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'non-2xx':>8} {'CPU us/req':>10}")
    for c in conns:
        plain = med[("mitmdump", c)]["rps"]
        for t in dict.fromkeys(t for t, _ in results):
            m = med[(t, c)]
            print(f"{t:<12} {c:>4} {m['rps']:>8.0f} {m['rps'] / plain:>8.2f} {m['p50']:>8.2f} "
                  f"{m['p99']:>8.2f} {m['non2xx']:>8.0f} {m['cpu_us']:>10.0f}")


if __name__ == "__main__":
    main()
