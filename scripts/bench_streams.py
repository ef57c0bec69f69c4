#!/usr/bin/env python3
"""Concurrent SSE streams: plain mitmdump streaming vs keymux (1 and 2 workers), same mock.

The mock upstream (scripts/benchmock.py: built to cost as little as possible; ``--mock
demo`` for keypool.demo.mock_upstream) sends ``--chunks`` content events ``--gap-ms``
apart per stream; closed-loop clients (bare asyncio Protocols on keep-alive connections,
all in this process; the clients and the mock run on uvloop when it is installed) hold C streams open for ``--seconds``, then let the streams in flight
finish. Targets alternate round by round; medians over rounds are printed: streams
completed in the window, TTFT p50/p99 (request sent -> first body byte), inter-chunk gap
p99 (between body reads), the proxy's CPU (utime+stime of its process tree from /proc) and
per SSE event delivered, the harness's own CPU (the mock's and the clients') and its share,
keymux/plain CPU per chunk and keymux-2w/keymux streams completed.

    .venv/bin/python scripts/bench_streams.py [--conc 64 256] [--seconds 6] [--rounds 3]
        [--targets plain keymux keymux-2w plain-planned] [--stagger]

``plain-planned`` is plain mitmdump with keymux's planned hook dispatch only
(scripts/planned_hooks.py): keymux's own cost per stream shows against it.

Targets (issue 12): keymux's CPU per chunk <= 1.1x plain mitmdump's; at 256 streams two
workers complete >= 1.3x the streams of one with a lower gap p99. keymux-2w uses a Redis
state when Debian's redis-server is there (as `keymux run --workers 2` wants). Loopback
only; every process it starts is stopped by PID.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import contextlib
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (ROOT, cpu_tree, free_port, keymux, mitmdump, planned, redis_server,
                      start, stop, loop_factory, two_workers, wait_up, write_keys)

AUTH = "Bearer sk-bench-0000000000000"


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

def targets(tmp: Path, mock_port: int, base: str | None = None,
            redis_url: str | None = None) -> dict:
    py, mitm = sys.executable, mitmdump(sys.executable, tmp, mock_port)
    config = write_keys(tmp / "keys.yaml", mock_port)
    # `keymux run --workers 2` wants a shared state: Redis when there is a redis-server
    fleet = write_keys(tmp / "fleet.yaml", mock_port, state=redis_url or "")
    found = {
        "plain": lambda port: mitm + ["-p", str(port), "--set", "stream_large_bodies=1"],
        # plain mitmdump with keymux's planned hook dispatch only: keymux's own cost apart
        "plain-planned": lambda port: planned(mitm) + ["-p", str(port),
                                                      "--set", "stream_large_bodies=1"],
        "keymux": lambda port: keymux(mitm, config) + ["-p", str(port)],
        # Two workers on one port, as `keymux run --workers 2` starts them (SO_REUSEPORT);
        # the CPU is summed over the launcher's whole process tree.
        "keymux-2w": lambda port: two_workers(py, keymux(mitm, fleet)) + ["-p", str(port)],
    }
    if base:  # keymux as another checkout has it (before/after figures in one run)
        addons = Path(base).resolve() / "addons"  # its keypool first on the path
        found["base"] = lambda port: (["env", f"PYTHONPATH={addons}"]
                                      + keymux(mitm, config, addons) + ["-p", str(port)])
    return found


def upstream(kind: str, port: int, args, tmp: Path) -> list[str]:
    """The mock: this bench's own (scripts/benchmock.py, cheap) or the demo/test one."""
    if kind == "bench":
        return [sys.executable, str(ROOT / "scripts/benchmock.py"), "--port", str(port),
                "--chunks", str(args.chunks), "--gap-ms", str(args.gap_ms)]
    behaviors = tmp / "behaviors.json"
    behaviors.write_text(json.dumps({"*": {"chunks": args.chunks, "chunk_delay_ms": args.gap_ms}}))
    return [sys.executable, "-m", "keypool.demo.mock_upstream", "--port", str(port),
            "--behaviors", str(behaviors)]


# -- the load: C closed-loop clients on keep-alive connections, bare asyncio Protocols --

class Run:
    """One measurement: the clients' shared counters and the moment the window closes."""

    def __init__(self, port: int, req: bytes, conc: int, seconds: float) -> None:
        self.port, self.req = port, req
        self.until = time.perf_counter() + seconds
        self.left = conc       # clients still running; the run ends when none is
        self.completed = 0     # streams finished inside the window
        self.events = 0        # SSE events delivered (the "chunks")
        self.failed = 0
        self.ttft: list[float] = []
        self.gaps: list[float] = []
        self.finished = asyncio.get_running_loop().create_future()

    def connect(self) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: Client(self), "127.0.0.1",
                                                       self.port))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            self.failed += 1
            self.retry()

    def retry(self) -> None:
        if time.perf_counter() < self.until:
            asyncio.get_running_loop().call_later(0.05, self.connect)
        else:
            self.leave()

    def leave(self) -> None:
        self.left -= 1
        if self.left == 0 and not self.finished.done():
            self.finished.set_result(None)


class Client(asyncio.Protocol):
    """One closed-loop client: sends, reads the stream to its end, sends again."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport = None
        self.open = False  # a request is out and its answer not finished

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        self.head, self.last, self.tail, self.open = b"", None, b"", True
        self.t0 = time.perf_counter()
        self.transport.write(self.run.req)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        run = self.run
        if self.head is not None:  # still reading the status line and headers
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 200"):
                self.transport.close()
                return
            data, self.head = self.head[end + 4:], None
            if not data:
                return
        if self.last is None:
            run.ttft.append(now - self.t0)
        else:
            run.gaps.append(now - self.last)
        self.last = now
        window = self.tail + data
        run.events += (self.tail[-4:] + data).count(b"data:")  # one split across reads counts once
        if not (window.endswith(b"\r\n0\r\n\r\n") or window == b"0\r\n\r\n"):
            self.tail = window[-7:]
            return
        self.open = False
        if now <= run.until:
            run.completed += 1
        if time.perf_counter() < run.until:
            self.send()
        else:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if self.open:  # closed mid-answer (or a non-200): try again on a new connection
            self.run.failed += 1
            self.run.retry()
        else:
            self.run.leave()


async def load(port: int, conc: int, seconds: float, req: bytes, spread: float = 0.0) -> Run:
    """``spread``: the clients' first requests spaced evenly over that many seconds (0: all
    at once, and since every stream lasts as long, they stay in step)."""
    run = Run(port, req, conc, seconds)
    loop = asyncio.get_running_loop()
    for i in range(conc):
        loop.call_later(i * spread / conc, run.connect)
    await run.finished
    return run


def stream_length(args) -> float:
    return args.gap_ms * (args.chunks + 2) / 1000  # role, chunks, stop, [DONE]: gaps


def spread(args) -> float:
    return stream_length(args) if args.stagger else 0.0


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_one(port: int, pid: int, mock_pid: int, conc: int, seconds: float, req: bytes,
            spread: float = 0.0) -> dict:
    cpu0, mock0, own0, t0 = cpu_tree(pid), cpu_tree(mock_pid), own_cpu(), time.perf_counter()
    # in-flight streams finish before it returns
    st = asyncio.run(load(port, conc, seconds, req, spread), loop_factory=loop_factory())
    own, mock = own_cpu() - own0, cpu_tree(mock_pid) - mock0
    cpu, wall = cpu_tree(pid) - cpu0, time.perf_counter() - t0
    q = statistics.quantiles
    return {"completed": st.completed, "failed": st.failed, "events": st.events,
            "ttft50": q(st.ttft, n=100)[49] * 1e3, "ttft99": q(st.ttft, n=100)[98] * 1e3,
            "gap99": q(st.gaps, n=100)[98] * 1e3, "cpu%": 100 * cpu / wall,
            "cpu_us_per_chunk": 1e6 * cpu / max(st.events, 1),
            "mock%": 100 * mock / wall, "load%": 100 * own / wall,
            "harness": 100 * (mock + own) / max(mock + own + cpu, 1e-9)}


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
    ap.add_argument("--stagger", action="store_true",
                    help="spread the clients' first requests over one stream's length (by "
                         "default they start together and stay in step: bursts of C "
                         "requests)")
    ap.add_argument("--mock", choices=("bench", "demo"), default="bench",
                    help="the upstream: scripts/benchmock.py (cheap) or the demo/test mock")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="keymux-bench-streams-"))
    mock_port = free_port()
    procs = [start(upstream(args.mock, mock_port, args, tmp), tmp / "mock.log")]
    redis = redis_server() if "keymux-2w" in args.targets else None
    with redis or contextlib.nullcontext():
        ports = {}
        try:
            wanted = {n: c for n, c in targets(tmp, mock_port, args.base, redis and redis.url).items()
                      if n in args.targets or n == "base"}
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
                    for t in order:
                        pid = procs[1 + list(ports).index(t)].pid
                        req = request(ports[t], args.include_usage)
                        results[(t, c)].append(run_one(ports[t], pid, procs[0].pid, c,
                                                       args.seconds, req, spread(args)))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            stop(procs)
    report(results, args)


FIELDS = ("completed", "failed", "ttft50", "ttft99", "gap99", "cpu%", "cpu_us_per_chunk",
          "mock%", "load%", "harness")


def report(results: dict, args) -> None:
    med = {k: {f: statistics.median(x[f] for x in v) for f in FIELDS} for k, v in results.items()}
    print(f"\nmedians of {args.rounds} rounds x {args.seconds:g}s; {args.chunks} chunks "
          f"{args.gap_ms:g} ms apart per stream; usage asked by the client: {args.include_usage}; "
          f"clients start {'staggered' if args.stagger else 'together'}; "
          f"mock: {args.mock}; harness loop: {'uvloop' if loop_factory() else 'asyncio'}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(f"{'target':<13} {'conc':>4} {'streams':>8} {'failed':>6} {'TTFT p50':>9} {'p99':>8} "
          f"{'gap p99':>8} {'CPU %':>6} {'CPU us/chunk':>13} {'mock %':>7} {'load %':>7} "
          f"{'harness':>8}")
    for (t, c), m in sorted(med.items(), key=lambda kv: kv[0][1]):
        print(f"{t:<13} {c:>4} {m['completed']:>8.0f} {m['failed']:>6.0f} {m['ttft50']:>8.1f}m "
              f"{m['ttft99']:>7.1f}m {m['gap99']:>7.1f}m {m['cpu%']:>6.1f} "
              f"{m['cpu_us_per_chunk']:>13.1f} {m['mock%']:>7.1f} {m['load%']:>7.1f} "
              f"{m['harness']:>7.1f}%")
    print("(CPU %: the proxy's process tree; mock % and load %: the harness's upstream and "
          "clients; harness: their share of all three's CPU)")
    stream_s = stream_length(args)
    for c in args.conc:
        # closed loop: a client fits whole streams only, so this bounds every ratio
        ideal = sum(int((args.seconds - i * spread(args) / c) // stream_s) for i in range(c))
        print(f"c={c}: a proxy that delays nothing completes {ideal}"
              f" streams (each takes {stream_s:.2f} s)")
        for t in sorted({t for t, _ in results if t != "plain"}):
            if (t, c) not in results or ("plain", c) not in results:
                continue
            # The ratio of each round's pair, then the median: the pairs ran back to back.
            ratios = [k["cpu_us_per_chunk"] / p["cpu_us_per_chunk"]
                      for k, p in zip(results[(t, c)], results[("plain", c)])]
            print(f"c={c}: {t}/plain CPU per chunk = {statistics.median(ratios):.3f} "
                  f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
        if ("keymux-2w", c) in results and ("keymux", c) in results:
            ratios = [w["completed"] / max(k["completed"], 1)
                      for w, k in zip(results[("keymux-2w", c)], results[("keymux", c)])]
            print(f"c={c}: keymux-2w/keymux streams completed = {statistics.median(ratios):.3f} "
                  f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}); gap p99 "
                  f"{med[('keymux-2w', c)]['gap99']:.1f} ms vs {med[('keymux', c)]['gap99']:.1f} ms")


if __name__ == "__main__":
    main()
