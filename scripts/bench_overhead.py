#!/usr/bin/env python3
"""What keymux costs: the mock upstream direct, through plain mitmdump, through keymux.

All three are measured in the same run, interleaved round by round, with wrk (Debian's
``wrk``) posting a small chat completion at concurrency 1 and 16. Prints requests/s and
p50/p99 latency (medians over rounds), the proxy's CPU time per request (from
/proc/PID/stat around each wrk run: steadier than req/s on a shared machine) and the ratios
keymux / plain mitmdump.

    .venv/bin/python scripts/bench_overhead.py [--seconds 8] [--rounds 3]

Targets (issue 2): keymux keeps >= 90% of plain mitmdump's requests/s at c=16 and adds
< 0.2 ms at p50 at c=1. Loopback only; every process it starts is stopped by PID.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import ROOT, free_port, start, stop, wait_up

BIN = Path(sys.executable).parent
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})


def wait_post(url: str, proc: subprocess.Popen) -> None:
    wait_up(url, proc, timeout=20, data=BODY.encode(),
            headers={"content-type": "application/json",
                     "authorization": "Bearer sk-bench-0000000000000"})


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, conns: int, seconds: int, script: Path, pid: int | None = None) -> dict:
    threads = 1 if conns == 1 else 2
    cpu0 = cpu_s(pid) if pid else 0.0
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = 1e6 * (cpu_s(pid) - cpu0) / max(requests, 1) if pid else 0.0
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "cpu_us": cpu_us,
            "non2xx": int(errors.group(1)) if errors else 0}


def _ms(v: str) -> float:
    num, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="keymux-bench-"))
    script = tmp / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n'
                      'wrk.headers["Authorization"] = "Bearer sk-bench-0000000000000"\n')
    mock_port, plain_port, kmx_port = free_port(), free_port(), free_port()
    config = tmp / "keys.yaml"
    keys = "\n".join(f"  - {{name: bench-{i}, provider: mock, key: sk-bench-key-{i:012d}}}"
                     for i in range(4))
    config.write_text(f"providers:\n  mock:\n    base_url: http://127.0.0.1:{mock_port}/v1\n"
                      f"keys:\n{keys}\n")
    mitm = [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "-q",
            "--mode", f"reverse:http://127.0.0.1:{mock_port}", "--set", f"confdir={tmp}"]
    procs = [
        start([sys.executable, "-m", "keypool.demo.mock_upstream", "--port", str(mock_port)],
              tmp / "mock.log"),
        start(mitm + ["-p", str(plain_port)], tmp / "plain.log"),
        start(mitm + ["-p", str(kmx_port), "-s", str(ROOT / "addons/keymux.py"),
                      "--set", f"keymux_config={config}"], tmp / "keymux.log"),
    ]
    targets = {"direct": mock_port, "mitmdump": plain_port, "keymux": kmx_port}
    try:
        for port, proc in zip(targets.values(), procs):
            wait_post(f"http://127.0.0.1:{port}/v1/chat/completions", proc)
        results = {(t, c): [] for t in targets for c in (1, 16)}
        for r in range(args.rounds):
            for c in (1, 16):
                for (t, port), proc in zip(targets.items(), procs):
                    results[(t, c)].append(wrk(f"http://127.0.0.1:{port}/v1/chat/completions",
                                               c, args.seconds, script, proc.pid))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        stop(procs)
    report(results, args)


def report(results: dict, args) -> None:
    med = {k: {f: statistics.median(x[f] for x in v) for f in ("rps", "p50", "p99", "cpu_us", "non2xx")}
           for k, v in results.items()}
    print(f"\nmedians of {args.rounds} rounds x {args.seconds}s, wrk POST /v1/chat/completions\n")
    print(f"{'path':<10} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>10} {'non-2xx':>8}")
    for (t, c), m in sorted(med.items(), key=lambda kv: (kv[0][1], list(results).index(kv[0]))):
        print(f"{t:<10} {c:>4} {m['rps']:>9.0f} {m['p50']:>8.3f} {m['p99']:>8.3f} "
              f"{m['cpu_us']:>10.0f} {m['non2xx']:>8.0f}")
    for c in (1, 16):
        k, p = med[("keymux", c)], med[("mitmdump", c)]
        print(f"\nc={c}: keymux/mitmdump req/s = {k['rps'] / p['rps']:.3f}; "
              f"p50 {k['p50'] - p['p50']:+.3f} ms; p99 {k['p99'] - p['p99']:+.3f} ms; "
              f"CPU per request {k['cpu_us'] / p['cpu_us']:.3f}x")


if __name__ == "__main__":
    main()
