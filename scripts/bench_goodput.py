#!/usr/bin/env python3
"""Goodput under per-key rate limits: open-loop load through keymux onto a rate-limited mock.

The mock upstream enforces, per key, 60 requests per sliding 10 s window (past that: 429
with Retry-After and x-ratelimit-* headers; successes carry x-ratelimit-remaining-requests).
Four keys = 24 req/s of capacity. Runs, each on its own provider and keys of one gateway
(so no key state or mock window carries over from one run to the next):

    A90, A150  "declared": keys.yaml gives each key rpm: 360 (60 per 10 s, averaged over
               keymux's 60 s window), at 90% and 150% of capacity
    B90, B150  "undeclared": no rpm in keys.yaml; keymux learns from 429 + Retry-After and
               the x-ratelimit-remaining-requests of successes, and re-issues
    C          four keys: one answers 401 forever, one 429 (Retry-After: 30) forever, two
               healthy (the same 60 per 10 s); load 50% of the healthy keys' capacity

Arrivals are open loop (Poisson, seeded, or evenly spaced), independent of responses: each
arrival is one small non-stream chat completion, one HTTP request, no client retries
(asyncio + one pooled aiohttp session). Routing settings are keymux's defaults.

    .venv/bin/python scripts/bench_goodput.py [--seconds 40] [--quick] [--arrivals poisson|even]
                                               [--only A90,B150] [--seed 1]

Goodput counts successes *completed* within the arrival window, divided by its length (so
requests queued past the end cannot lift it above the upstream's capacity; keep the length a
multiple of the mock's 10 s window, or the first window's burst can). Upstream counts
come from the mock's /_mock/stats, gateway state from /_keymux/stats (saved per run in the
work directory printed at the start, with the gateway's log). Loopback only; every process
it starts is stopped by PID.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from benchlib import free_port, start, stop, wait_up
from keypool.redact import mask

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

KEYS_PER_RUN = 4
MOCK_RPM, MOCK_WINDOW_S = 60, 10.0            # per key, enforced by the mock
KEY_CAPACITY = MOCK_RPM / MOCK_WINDOW_S         # 6 req/s a key
CAPACITY = KEYS_PER_RUN * KEY_CAPACITY          # 24 req/s
DECLARED_RPM = round(KEY_CAPACITY * 60)         # 360: keymux's rpm is per 60 s
FAST_REFUSAL_S = 1.0                            # a refusal slower than this is not "fast"
CLIENT_TIMEOUT_S = 30.0                         # client-side cap per request (keymux's own is 120 s)
MODEL = "gpt-4o-mini"
BODY = json.dumps({"model": MODEL, "max_tokens": 16,
                   "messages": [{"role": "user", "content": "hello"}]}).encode()
RATE_LIMIT = {"rpm": MOCK_RPM, "window_s": MOCK_WINDOW_S}


@dataclass
class Run:
    name: str
    title: str
    load: float                     # offered req/s
    capacity: float                 # req/s the healthy keys can serve
    keys: list[dict]                # name, secret, keymux extras, mock behaviour
    kind: str                       # "90" | "150" | "mixed": which targets apply


@dataclass
class Result:
    sched: float
    start: float = 0.0
    end: float = 0.0
    status: int | None = None       # None: no HTTP answer (timeout, connection error)
    error: str = ""
    retry_after: str | None = None  # the Retry-After header of the answer, if any
    code: str = ""                  # the gateway's x-keymux-error, if any


@dataclass
class Report:
    run: Run
    seconds: float
    results: list[Result]
    upstream: dict[str, dict[str, int]]          # key name -> status -> count
    gw_keys: list[dict]
    lag_max: float
    windows: dict[str, tuple[int, float | None]]   # key name -> (most 200s in any 10 s, first time at 60)
    figures: dict = field(default_factory=dict)
    targets: list[tuple[str, bool]] = field(default_factory=list)


def make_runs() -> list[Run]:
    n = 0

    def key(prov: str, role: str, i: int, rpm: int | None, behaviour: dict) -> dict:
        nonlocal n
        n += 1
        return {"name": f"{prov}-{role}{i}", "secret": f"sk-goodput-{prov}-{role}{i}-{n:04d}",
                "rpm": rpm, "behaviour": behaviour}

    def pool(prov: str, rpm: int | None) -> list[dict]:
        return [key(prov, "k", i, rpm, RATE_LIMIT) for i in range(KEYS_PER_RUN)]

    a, b = "rpm: 360 declared per key", "no rpm declared (learned from 429s)"
    healthy = 2 * KEY_CAPACITY
    mixed = [key("mixed", "ok", 0, None, RATE_LIMIT), key("mixed", "invalid", 1, None, {"status": 401}),
             key("mixed", "ok", 2, None, RATE_LIMIT),
             key("mixed", "limited", 3, None, {"status": 429, "headers": {"Retry-After": "30"}})]
    return [
        Run("A90", f"declared ({a}), 90% of capacity", 0.9 * CAPACITY, CAPACITY, pool("a90", DECLARED_RPM), "90"),
        Run("A150", f"declared ({a}), 150% of capacity", 1.5 * CAPACITY, CAPACITY, pool("a150", DECLARED_RPM), "150"),
        Run("B90", f"undeclared ({b}), 90% of capacity", 0.9 * CAPACITY, CAPACITY, pool("b90", None), "90"),
        Run("B150", f"undeclared ({b}), 150% of capacity", 1.5 * CAPACITY, CAPACITY, pool("b150", None), "150"),
        Run("C", "1 key 401 forever, 1 key 429 (Retry-After: 30) forever, 2 healthy; "
                 "50% of the healthy keys' capacity", 0.5 * healthy, healthy, mixed, "mixed"),
    ]


# ---------------------------------------------------------------- processes

def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def write_config(path: Path, runs: list[Run], mock_port: int) -> None:
    lines = ["providers:"]
    for r in runs:
        lines += [f"  {r.name.lower()}:", f"    base_url: http://127.0.0.1:{mock_port}/v1"]
    lines.append("keys:")
    for r in runs:
        for k in r.keys:
            rpm = f", rpm: {k['rpm']}" if k["rpm"] else ""
            lines.append(f"  - {{name: {k['name']}, provider: {r.name.lower()}, key: {k['secret']}{rpm}}}")
    path.write_text("\n".join(lines) + "\n")  # no routing: section: keymux's defaults


# ---------------------------------------------------------------- load

def arrivals(rate: float, seconds: float, kind: str, rng: random.Random) -> list[float]:
    if kind == "even":
        n = int(rate * seconds)
        return [i / rate for i in range(n)]
    out, t = [], rng.expovariate(rate)
    while t < seconds:
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def one(session: aiohttp.ClientSession, url: str, headers: dict, res: Result, t0: float) -> None:
    loop = asyncio.get_running_loop()
    res.start = loop.time() - t0
    try:
        async with session.post(url, data=BODY, headers=headers) as resp:
            await resp.read()
            res.status = resp.status
            res.retry_after = resp.headers.get("retry-after")
            res.code = resp.headers.get("x-keymux-error", "")
    except asyncio.TimeoutError:
        res.error = "client timeout"
    except (aiohttp.ClientError, OSError) as e:
        res.error = type(e).__name__
    res.end = loop.time() - t0


async def drive(url: str, provider: str, rate: float, seconds: float, kind: str,
                rng: random.Random) -> tuple[list[Result], float, float]:
    times = arrivals(rate, seconds, kind, rng)
    results = [Result(t) for t in times]
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench-client-0000",
               "x-keymux-provider": provider}
    conn = aiohttp.TCPConnector(limit=0, force_close=False)  # pooled, never a client-side queue
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    lag_max = 0.0
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        t0, wall0 = loop.time(), time.time()
        tasks = []
        for res in results:
            delay = t0 + res.sched - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag_max = max(lag_max, loop.time() - t0 - res.sched)
            tasks.append(asyncio.create_task(one(session, url, headers, res, t0)))
        await asyncio.gather(*tasks)
    return results, lag_max, wall0


def key_windows(records: list[dict], secrets: dict[str, str], wall0: float) -> dict[str, tuple[int, float | None]]:
    """Per key, from the mock's own records: the most successes in any sliding window
    (= rpm minus the lowest x-ratelimit-remaining-requests it sent), and when (seconds into
    the run) a success first said remaining 0."""
    out = {}
    for name, secret in secrets.items():
        m = mask(secret)
        times = sorted(r["time"] for r in records if r["key"] == m and r["status"] == 200)
        best, j, first = 0, 0, None
        for i, t in enumerate(times):
            while times[j] <= t - MOCK_WINDOW_S:
                j += 1
            best = max(best, i - j + 1)
            if first is None and i - j + 1 >= MOCK_RPM:
                first = t - wall0
        out[name] = (best, first)
    return out


# ---------------------------------------------------------------- figures

def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)]  # nearest rank


def ms(x: float | None) -> str:
    return "-" if x is None else (f"{x * 1000:.0f} ms" if x < 10 else f"{x:.1f} s")


def busiest(times: list[float], span: float) -> int:
    """Most arrivals in any ``span`` seconds (what a sliding upstream window sees at worst)."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - span:
            j += 1
        best = max(best, i - j + 1)
    return best


def analyse(rep: Report) -> None:
    r, T, res = rep.run, rep.seconds, rep.results
    n = len(res)
    ok = [x for x in res if x.status is not None and x.status < 400]
    refused = [x for x in res if not (x.status is not None and x.status < 400)]
    by = Counter("429" if x.status == 429 else "5xx" if x.status and x.status >= 500
                 else "other" for x in refused)
    up_total = sum(sum(v.values()) for v in rep.upstream.values())
    up_429 = sum(v.get("429", 0) for v in rep.upstream.values())
    good_in_window = sum(1 for x in ok if x.end <= T)
    f = rep.figures = {
        "requests": n, "offered": n / T, "goodput": good_in_window / T,
        "goodput_pct": 100 * good_in_window / T / r.capacity, "ok": len(ok),
        "err429": by["429"], "err5xx": by["5xx"], "errother": by["other"],
        "ok_p50": pct([x.end - x.start for x in ok], 50), "ok_p99": pct([x.end - x.start for x in ok], 99),
        "ref_p50": pct([x.end - x.start for x in refused], 50),
        "ref_max": max((x.end - x.start for x in refused), default=None),
        "up_per_req": up_total / n if n else 0.0, "up_total": up_total,
        "up_429": up_429, "up_429_pct": 100 * up_429 / n if n else 0.0,
        "codes": Counter(x.code or x.error or str(x.status) for x in refused),
        "no_retry_after": sum(1 for x in refused if x.status == 429 and x.retry_after is None),
        "retry_after_p50": pct([float(x.retry_after) for x in refused
                                if x.retry_after and x.retry_after.isdigit()], 50),
        "ok_slices": [sum(1 for x in ok if i * MOCK_WINDOW_S < x.end <= (i + 1) * MOCK_WINDOW_S)
                      for i in range(int(-(-T // MOCK_WINDOW_S)))],
        "busiest_window": busiest([x.sched for x in res], MOCK_WINDOW_S),
        "slow_refusals": sum(1 for x in refused if x.end - x.start > FAST_REFUSAL_S),
    }
    errors = len(refused)
    if r.kind == "90":
        rep.targets = [("zero client-visible errors", errors == 0),
                       ("upstream 429s < 1% of requests", f["up_429_pct"] < 1.0)]
    elif r.kind == "150":
        fast429 = all(x.status == 429 and x.retry_after is not None and x.end - x.start <= FAST_REFUSAL_S
                      for x in refused)
        rep.targets = [("goodput >= 95% of capacity", f["goodput_pct"] >= 95.0),
                       (f"every refusal a 429 with Retry-After in <= {FAST_REFUSAL_S:g} s", fast429),
                       ("<= 1.1 upstream calls per request", f["up_per_req"] <= 1.1)]
    else:
        rep.targets = [("zero client-visible errors", errors == 0)]


def print_report(rep: Report, arrivals_kind: str) -> None:
    r, f = rep.run, rep.figures
    p = lambda *a: print(*a, flush=True)
    p(f"\n== {r.name}: {r.title}")
    p(f"   offered    {f['offered']:6.1f} req/s ({f['requests']} requests in {rep.seconds:g} s, "
      f"{arrivals_kind}; capacity {r.capacity:g} req/s; max arrival lag {rep.lag_max * 1000:.0f} ms)")
    p(f"   goodput    {f['goodput']:6.1f} req/s = {f['goodput_pct']:.1f}% of capacity "
      f"({f['ok']} successes in all, incl. after the window)")
    codes = ", ".join(f"{k}: {v}" for k, v in f["codes"].most_common()) or "none"
    p(f"   errors     429: {f['err429']}  5xx: {f['err5xx']}  other: {f['errother']}   ({codes})")
    p(f"   latency    ok p50 {ms(f['ok_p50'])}, p99 {ms(f['ok_p99'])}; refused p50 {ms(f['ref_p50'])}, "
      f"max {ms(f['ref_max'])} ({f['slow_refusals']} slower than {FAST_REFUSAL_S:g} s, "
      f"{f['no_retry_after']} 429s without Retry-After; median Retry-After "
      f"{'-' if f['retry_after_p50'] is None else format(f['retry_after_p50'], 'g') + ' s'})")
    p(f"   over time  successes per {MOCK_WINDOW_S:g} s: {' '.join(map(str, f['ok_slices']))}; "
      f"busiest {MOCK_WINDOW_S:g} s of arrivals: {f['busiest_window']} "
      f"(the healthy keys take {round(r.capacity * MOCK_WINDOW_S)} per {MOCK_WINDOW_S:g} s)")
    p(f"   upstream   {f['up_per_req']:.2f} calls per client request ({f['up_total']}); "
      f"429s {f['up_429_pct']:.1f}% of client requests ({f['up_429']})")
    for k in rep.gw_keys:
        up = " ".join(f"{s}:{c}" for s, c in sorted(rep.upstream.get(k["name"], {}).items()))
        most, first = rep.windows.get(k["name"], (0, None))
        at0 = f", remaining 0 at {first:.1f} s" if first is not None else ""
        p(f"     {k['name']:<14} upstream {up or '-':<13} max {most:>2}/{MOCK_WINDOW_S:g} s{at0:<23} keymux: {k['state']}"
          f"{', cooling ' + str(k['cooldown_s']) + ' s' if k['cooldown_s'] else ''}, "
          f"failures {k['failures_by_class'] or '{}'}")
    p("   targets    " + "; ".join(f"{name}: {'PASS' if ok else 'MISS'}" for name, ok in rep.targets))


def print_table(reports: list[Report]) -> None:
    print("\n| run | offered req/s | goodput req/s (% cap) | errors 429/5xx/other | ok p50 / p99 | "
          "refused p50 | upstream calls/req | upstream 429s | targets |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rep in reports:
        f = rep.figures
        t = ", ".join(f"{n} {'PASS' if ok else 'MISS'}" for n, ok in rep.targets)
        print(f"| {rep.run.name} | {f['offered']:.1f} | {f['goodput']:.1f} ({f['goodput_pct']:.0f}%) | "
              f"{f['err429']}/{f['err5xx']}/{f['errother']} | {ms(f['ok_p50'])} / {ms(f['ok_p99'])} | "
              f"{ms(f['ref_p50'])} | {f['up_per_req']:.2f} | {f['up_429_pct']:.1f}% | {t} |")


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=40, help="arrival window per run (default 40)")
    ap.add_argument("--quick", action="store_true", help="10 s runs")
    ap.add_argument("--arrivals", choices=("poisson", "even"), default="poisson")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", help="comma-separated runs (A90,A150,B90,B150,C)")
    args = ap.parse_args()
    seconds = 10.0 if args.quick else args.seconds
    if seconds % MOCK_WINDOW_S:
        print(f"warning: {seconds:g} s is not a multiple of the mock's {MOCK_WINDOW_S:g} s window, so "
              "goodput may read above capacity (a window's worth is served at once)", file=sys.stderr)
    runs = make_runs()
    if args.only:
        wanted = {s.strip().upper() for s in args.only.split(",")}
        runs = [r for r in runs if r.name in wanted]
        if not runs:
            raise SystemExit("--only names no run")

    tmp = Path(tempfile.mkdtemp(prefix="keymux-goodput-"))
    print(f"work directory (config, logs, stats): {tmp}", flush=True)
    mock_port, kmx_port = free_port(), free_port()
    behaviours = tmp / "behaviours.json"
    behaviours.write_text(json.dumps({k["secret"]: k["behaviour"] for r in runs for k in r.keys}, indent=1))
    config = tmp / "keys.yaml"
    write_config(config, runs, mock_port)
    procs = [start([sys.executable, "-m", "keypool.demo.mock_upstream", "--port", str(mock_port),
                    "--behaviors", str(behaviours)], tmp / "mock.log")]
    procs.append(start([str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "-p", str(kmx_port), "-q",
                        "--mode", f"reverse:http://127.0.0.1:{mock_port}", "--set", f"confdir={tmp}",
                        "-s", str(ROOT / "addons/keymux.py"), "--set", f"keymux_config={config}"],
                       tmp / "keymux.log"))
    reports: list[Report] = []
    rng = random.Random(args.seed)
    gw = f"http://127.0.0.1:{kmx_port}"
    try:
        wait_up(f"http://127.0.0.1:{mock_port}/_mock/health", procs[0])
        wait_up(f"{gw}/health", procs[1])
        for run in runs:
            print(f"{run.name}: {run.load:.1f} req/s for {seconds:g} s ...", file=sys.stderr, flush=True)
            results, lag, wall0 = asyncio.run(drive(f"{gw}/v1/chat/completions", run.name.lower(), run.load,
                                             seconds, args.arrivals, rng))
            stats = get_json(f"{gw}/_keymux/stats")
            (tmp / f"keymux-stats-{run.name}.json").write_text(json.dumps(stats, indent=1))
            mock = get_json(f"http://127.0.0.1:{mock_port}/_mock/stats")["keys"]
            upstream = {k["name"]: mock.get(mask(k["secret"]), {}).get("by_status", {}) for k in run.keys}
            names = {k["name"] for k in run.keys}
            n_up = sum(sum(v.values()) for v in upstream.values())
            records = get_json(f"http://127.0.0.1:{mock_port}/_mock/requests?limit={n_up}",
                               timeout=30)["requests"] if n_up else []
            windows = key_windows(records, {k["name"]: k["secret"] for k in run.keys}, wall0)
            rep = Report(run, seconds, results, upstream,
                         [k for k in stats["keys"] if k["name"] in names], lag, windows)
            analyse(rep)
            print_report(rep, args.arrivals)
            reports.append(rep)
    finally:
        stop(procs[::-1])
    print_table(reports)
    print(f"\ncommand: {' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}; "
          f"gateway log and per-run /_keymux/stats in {tmp}")


if __name__ == "__main__":
    main()
