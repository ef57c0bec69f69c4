#!/usr/bin/env python3
"""Concurrent SSE streams: plain mitmdump streaming vs keymux, same mock, same run.

The mock upstream sends ``--chunks`` content events ``--gap-ms`` apart per stream;
closed-loop clients (raw asyncio sockets, keep-alive) hold C streams open for
``--seconds``, then let the streams in flight finish. Targets alternate round by round;
medians over rounds are printed: streams completed in the window, TTFT p50/p99 (request
sent -> first body byte), inter-chunk gap p99 (between body reads), the proxy's CPU
(utime+stime of its process tree from /proc) per SSE event delivered, and keymux/plain.

    .venv/bin/python scripts/bench_streams.py [--conc 64 256] [--seconds 6] [--rounds 3]

Target (issue 12): keymux's CPU per chunk <= 1.1x plain mitmdump's. Loopback only; every
process it starts is stopped by PID.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, free_port, start, stop, wait_up

BIN = Path(sys.executable).parent
AUTH = "Bearer sk-bench-0000000000000"
TICK = os.sysconf("SC_CLK_TCK")


def request(port: int, include_usage: bool) -> bytes:
    body = {"model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "hello"}]}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    raw = json.dumps(body).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"authorization: {AUTH}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(raw)}\r\n\r\n").encode() + raw


# -- the processes under test: name -> (command for a port, url checked before a run) --

# Starts the command twice; SIGINT/SIGTERM stop both with benchlib.stop (argv[1]: scripts/).
TWO_WORKERS = """
import signal, subprocess, sys
sys.path.insert(0, sys.argv[1])
from benchlib import stop
procs = [subprocess.Popen(sys.argv[2:]) for _ in range(2)]
def end(*_):
    stop(procs)
    sys.exit(0)
signal.signal(signal.SIGINT, end)
signal.signal(signal.SIGTERM, end)
for p in procs:
    p.wait()
"""

def targets(tmp: Path, mock_port: int, base: str | None = None) -> dict:
    mitm = [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "-q",
            "--mode", f"reverse:http://127.0.0.1:{mock_port}", "--set", f"confdir={tmp}"]
    config = tmp / "keys.yaml"
    keys = "\n".join(f"  - {{name: bench-{i}, provider: mock, key: sk-bench-key-{i:012d}}}"
                     for i in range(4))
    config.write_text(f"providers:\n  mock:\n    base_url: http://127.0.0.1:{mock_port}/v1\n"
                      f"keys:\n{keys}\n")

    def keymux(addons: Path) -> list[str]:
        return mitm + ["-s", str(addons / "keymux.py"), "--set", f"keymux_config={config}"]
    found = {
        "plain": lambda port: mitm + ["-p", str(port), "--set", "stream_large_bodies=1"],
        "keymux": lambda port: keymux(ROOT / "addons") + ["-p", str(port)],
        # Two workers on one port, as `keymux run --workers 2` starts them (SO_REUSEPORT);
        # the CPU is summed over the launcher's whole process tree.
        "keymux-2w": lambda port: [sys.executable, "-c", TWO_WORKERS, str(ROOT / "scripts"),
                                   sys.executable, "-m",
                                   "keypool.mitm.reuseport", *keymux(ROOT / "addons")[1:],
                                   "-p", str(port)],
    }
    if base:  # keymux as another checkout has it (before/after figures in one run)
        addons = Path(base).resolve() / "addons"  # its keypool first on the path
        found["base"] = lambda port: (["env", f"PYTHONPATH={addons}"] + keymux(addons)
                                      + ["-p", str(port)])
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants (children found through /proc)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


# -- the load: C closed-loop clients on keep-alive connections --

class Stats:
    def __init__(self) -> None:
        self.completed = 0   # streams finished inside the window
        self.events = 0      # SSE events delivered (the "chunks")
        self.failed = 0
        self.ttft: list[float] = []
        self.gaps: list[float] = []


async def one_stream(reader, writer, req: bytes, st: Stats) -> None:
    t0 = time.perf_counter()
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head[:40])
    last, tail = None, b""
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed mid-stream")
        now = time.perf_counter()
        if last is None:
            st.ttft.append(now - t0)
        else:
            st.gaps.append(now - last)
        last = now
        window = tail + data
        st.events += (tail[-4:] + data).count(b"data:")  # one split across reads counts once
        if window.endswith(b"\r\n0\r\n\r\n") or window == b"0\r\n\r\n":
            return
        tail = window[-7:]


async def client(port: int, req: bytes, until: float, st: Stats) -> None:
    reader = writer = None
    while time.perf_counter() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await one_stream(reader, writer, req, st)
            if time.perf_counter() <= until:
                st.completed += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            st.failed += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


async def load(port: int, conc: int, seconds: float, req: bytes) -> Stats:
    st = Stats()
    until = time.perf_counter() + seconds
    await asyncio.gather(*(client(port, req, until, st) for _ in range(conc)))
    return st


def run_one(port: int, pid: int, conc: int, seconds: float, req: bytes) -> dict:
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    st = asyncio.run(load(port, conc, seconds, req))  # in-flight streams finish before it returns
    cpu, wall = cpu_seconds(pid) - cpu0, time.perf_counter() - t0
    q = statistics.quantiles
    return {"completed": st.completed, "failed": st.failed, "events": st.events,
            "ttft50": q(st.ttft, n=100)[49] * 1e3, "ttft99": q(st.ttft, n=100)[98] * 1e3,
            "gap99": q(st.gaps, n=100)[98] * 1e3, "cpu%": 100 * cpu / wall,
            "cpu_us_per_chunk": 1e6 * cpu / max(st.events, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conc", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--gap-ms", type=float, default=50)
    ap.add_argument("--include-usage", action="store_true",
                    help="clients ask for usage themselves (keymux then strips nothing)")
    ap.add_argument("--targets", nargs="+", default=["plain", "keymux"])
    ap.add_argument("--base", metavar="DIR",
                    help="also run keymux from this checkout (target 'base'), e.g. main's")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="keymux-bench-streams-"))
    behaviors = tmp / "behaviors.json"
    behaviors.write_text(json.dumps({"*": {"chunks": args.chunks, "chunk_delay_ms": args.gap_ms}}))
    mock_port = free_port()
    procs = [start([sys.executable, "-m", "keypool.demo.mock_upstream", "--port", str(mock_port),
                    "--behaviors", str(behaviors)], tmp / "mock.log")]
    wanted = {n: c for n, c in targets(tmp, mock_port, args.base).items()
              if n in args.targets or n == "base"}
    ports = {}
    try:
        for name, cmd in wanted.items():
            ports[name] = free_port()
            procs.append(start(cmd(ports[name]), tmp / f"{name}.log"))
        for (name, port), proc in zip(ports.items(), procs[1:]):
            req = request(port, args.include_usage)
            wait_up(f"http://127.0.0.1:{port}/v1/chat/completions", proc, timeout=30,
                    data=req.split(b"\r\n\r\n", 1)[1],
                    headers={"authorization": AUTH, "content-type": "application/json"})
        results = {(t, c): [] for c in args.conc for t in ports}
        for r in range(args.rounds):
            for c in args.conc:
                order = list(ports) if r % 2 == 0 else list(reversed(ports))  # alternate
                for t, proc in zip(order, [procs[1 + list(ports).index(t)] for t in order]):
                    req = request(ports[t], args.include_usage)
                    results[(t, c)].append(run_one(ports[t], proc.pid, c, args.seconds, req))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        stop(procs)
    report(results, args)


def report(results: dict, args) -> None:
    fields = ("completed", "failed", "ttft50", "ttft99", "gap99", "cpu%", "cpu_us_per_chunk")
    med = {k: {f: statistics.median(x[f] for x in v) for f in fields} for k, v in results.items()}
    print(f"\nmedians of {args.rounds} rounds x {args.seconds:g}s; {args.chunks} chunks "
          f"{args.gap_ms:g} ms apart per stream; usage asked by the client: {args.include_usage}\n")
    print(f"{'target':<10} {'conc':>4} {'streams':>8} {'failed':>6} {'TTFT p50':>9} {'p99':>8} "
          f"{'gap p99':>8} {'CPU %':>6} {'CPU us/chunk':>13}")
    for (t, c), m in sorted(med.items(), key=lambda kv: kv[0][1]):
        print(f"{t:<10} {c:>4} {m['completed']:>8.0f} {m['failed']:>6.0f} {m['ttft50']:>8.1f}m "
              f"{m['ttft99']:>7.1f}m {m['gap99']:>7.1f}m {m['cpu%']:>6.1f} "
              f"{m['cpu_us_per_chunk']:>13.1f}")
    for c in args.conc:
        for t in sorted({t for t, _ in results if t != "plain"}):
            if (t, c) not in results or ("plain", c) not in results:
                continue
            # The ratio of each round's pair, then the median: the pairs ran back to back.
            ratios = [k["cpu_us_per_chunk"] / p["cpu_us_per_chunk"]
                      for k, p in zip(results[(t, c)], results[("plain", c)])]
            print(f"c={c}: {t}/plain CPU per chunk = {statistics.median(ratios):.3f} "
                  f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
