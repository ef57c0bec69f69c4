#!/usr/bin/env python3
"""Soak: minutes of mixed, faulty traffic through a real mitmdump + keymux, then a report.

It starts its own mock upstream and gateway on free loopback ports, in a fresh work
directory (printed first), and drives them with several concurrent aiohttp clients:
OpenAI- and Anthropic-shaped requests, streams and non-streams, some clients dropping a
stream half way. Keys: two healthy OpenAI keys, one the mock rate-limits (undeclared),
one flaky (5xx or a reset before headers, now and then), one that is dead (401) for a
while now and then, two Anthropic keys of which one is flaky (529/500). keys.yaml is
rewritten now and then (sometimes with a typo, which must not stop anything); each
rewrite is followed on /_keymux/health until the gateway loaded or rejected it.

Every --sample-s it reads the gateway's RSS and open fds from /proc. The report gives
requests sent/answered/succeeded, errors by cause (2% of requests carry a wrong
client token: 401s are expected), what the mock answered, lost requests (sent and never answered
or a stream that never ended: must be 0), upstream calls per request, latency, RSS and fds
at start/middle/end with slopes, and in-flight slots left after the traffic (must be 0).

    .venv/bin/python scripts/soak.py [--minutes 10 | --seconds 20] [--clients 8] [--seed 1]
                                     [--rss-tolerance-mb 64] [--fd-tolerance 32] [--json FILE]

Exit status: 0 clean; 1 lost requests, leaked in-flight slots, or RSS/fd growth past the
tolerance (start = the first sample after a warm-up of 10% of the run).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, free_port, start, stop, wait_up  # noqa: E402

BIN = Path(sys.executable).parent
ADMIN = "kmx-soak-admin-0123456789abcdef"
TOKENS = ("kmx-soak-client-a-0123456789", "kmx-soak-client-b-0123456789")
KEYS = {  # name -> (provider, secret, initial mock behaviour)
    "good1": ("mock", "sk-soak-good1-000000000001", {"chunk_delay_ms": 5}),
    "good2": ("mock", "sk-soak-good2-000000000002", {"chunk_delay_ms": 5}),
    "ratelimited": ("mock", "sk-soak-rl-00000000000003", {"rpm": 20, "window_s": 10}),
    "flaky": ("mock", "sk-soak-flaky-000000000004", {}),
    "dead": ("mock", "sk-soak-dead-0000000000005", {}),
    "ant1": ("mockant", "sk-ant-soak-one-0000000006", {}),
    "ant2": ("mockant", "sk-ant-soak-flaky-00000007", {}),
}
CLIENT_TIMEOUT_S = 60      # no answer by then = lost (the gateway's own deadline is 20 s)
MSG = [{"role": "user", "content": "Say hello to the soak test please"}]


def config_text(mock_url: str, state_dir: Path, version: int, broken: bool = False) -> str:
    keys = "".join(f"  - name: {n}\n    provider: {p}\n    key: {s}\n"
                   + (f"    weight: {1 + version % 2}\n" if n == "good2" else "")
                   for n, (p, s, _) in KEYS.items())
    text = f"""# soak config, rewrite {version}
version: 1
providers:
  mock: {{base_url: "{mock_url}/v1", models: ["gpt-*"], stream_usage: true}}
  mockant: {{base_url: "{mock_url}/v1", auth: x-api-key, models: ["claude-*"]}}
keys:
{keys}clients:
  - {{name: soak-a, token: {TOKENS[0]}}}
  - {{name: soak-b, token: {TOKENS[1]}}}
routing:
  timeout_s: 20
  cooldown: {{rate_limited_s: 5, server_error_s: 1, max_s: 10, auth_error_s: 5}}
state_dir: {state_dir}
"""
    return text.replace("routing:", "routing: [") if broken else text


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    succeeded: int = 0
    aborted: int = 0                                   # client dropped a stream on purpose
    causes: Counter = field(default_factory=Counter)   # errors by status/code
    lost: Counter = field(default_factory=Counter)     # never answered, by how
    latencies: list = field(default_factory=list)


# ---------------------------------------------------------------- one request

def _request(kind: str, rng: random.Random) -> tuple[str, dict, dict]:
    """(path, body, headers) for one request of ``kind``."""
    h = {"authorization": f"Bearer {rng.choice(TOKENS) if rng.random() > 0.02 else 'kmx-soak-wrong-token'}"}
    stream = kind.endswith("stream") or kind == "abort"
    if kind.startswith("ant"):
        h |= {"anthropic-version": "2023-06-01"}
        return "/v1/messages", {"model": "claude-soak", "max_tokens": 16, "messages": MSG, "stream": stream}, h
    if kind == "abort":
        h["x-mock-chunk-delay-ms"] = "150"  # slow enough to leave half way
    return "/v1/chat/completions", {"model": "gpt-soak", "messages": MSG, "stream": stream}, h


def _cause(status: int, body: bytes) -> str:
    try:
        err = json.loads(body)["error"]
        code = err.get("code") or err.get("type") if isinstance(err, dict) else None
    except (ValueError, KeyError, TypeError):
        code = None
    return f"{status} {code or '-'}"


async def one(session: aiohttp.ClientSession, gw: str, kind: str, rng: random.Random, t: Tally) -> None:
    path, body, headers = _request(kind, rng)
    t.sent += 1
    t0 = time.monotonic()
    try:
        async with session.post(gw + path, json=body, headers=headers) as r:
            if kind == "abort" and r.status == 200:
                await r.content.readany()      # the first event arrived: now hang up
                r.close()
                t.answered += 1
                t.aborted += 1
                return
            data = await r.read()
            if r.status == 200 and body["stream"] and not (b"[DONE]" in data or b"message_stop" in data):
                t.lost["stream never ended"] += 1
                return
            t.answered += 1
            if r.status != 200:
                t.causes[_cause(r.status, data)] += 1
            else:
                t.succeeded += 1
                t.latencies.append(time.monotonic() - t0)
    except asyncio.TimeoutError:
        t.lost[f"no answer in {CLIENT_TIMEOUT_S} s"] += 1
    except (aiohttp.ClientError, OSError) as e:
        t.lost[type(e).__name__] += 1


async def worker(session, gw: str, rng: random.Random, t: Tally, until: float) -> None:
    kinds = ("chat",) * 3 + ("chat_stream",) * 3 + ("ant", "ant_stream") * 2 + ("abort",)
    while time.monotonic() < until:
        await one(session, gw, rng.choice(kinds), rng, t)
        await asyncio.sleep(rng.uniform(0, 0.1))


# ---------------------------------------------------------------- faults and samples

async def chaos(session, mock: str, gw: str, cfg: Path, state: Path, rng: random.Random,
                until: float, rewrite_every: float, log: list) -> None:
    """Flaky keys now and then, the dead key dead for a while, config rewrites."""
    async def behave(name: str, **b) -> None:
        async with session.post(f"{mock}/_mock/behavior", json={"key": KEYS[name][1], **b}) as r:
            r.raise_for_status()

    t0, tick, version, dead = time.monotonic(), 0, 0, False
    next_rewrite = t0 + rewrite_every
    while time.monotonic() < until:
        tick += 1
        if rng.random() < 0.5:
            await behave("flaky", **rng.choice([{"status": rng.choice([500, 502, 503]), "times": rng.randint(1, 3)},
                                                {"reset": True, "times": 1}]))
        if rng.random() < 0.3:
            await behave("ant2", status=rng.choice([529, 500]), times=rng.randint(1, 2))
        if tick % 10 == 0:  # every ~20 s the dead key dies or comes back
            dead = not dead
            await behave("dead", **({"status": 401} if dead else {}))
        if time.monotonic() >= next_rewrite:
            version += 1
            broken = version % 4 == 3  # a typo the gateway must reject while it keeps serving
            before = await health(session, gw)
            tmp = cfg.with_suffix(".tmp")
            tmp.write_text(config_text(mock, state, version, broken))
            os.replace(tmp, cfg)
            seen = await reload_seen(session, gw, before, broken)
            log.append(f"{time.monotonic() - t0:7.1f}s config rewrite {version}"
                       f"{' (broken)' if broken else ''}: {seen}")
            next_rewrite += rewrite_every
        await asyncio.sleep(2)


async def health(session, gw: str) -> dict:
    async with session.get(f"{gw}/_keymux/health", headers={"x-keymux-admin-token": ADMIN}) as r:
        return await r.json()


async def reload_seen(session, gw: str, before: dict, broken: bool, within: float = 10) -> str:
    """How the gateway took a rewrite: loaded (a new config_loaded_at) or, for a broken
    file, rejected (last_reload_error set) while the previous config kept serving."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        h = await health(session, gw)
        if broken and h.get("last_reload_error"):
            return f"rejected after {time.monotonic() - t0:.1f} s"
        if not broken and h.get("config_loaded_at") != before.get("config_loaded_at"):
            return f"loaded after {time.monotonic() - t0:.1f} s"
        await asyncio.sleep(0.1)
    return RELOAD_NOT_SEEN


RELOAD_NOT_SEEN = "NOT SEEN within 10 s"


def sample(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open fds) of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def sampler(pid: int, every: float, until: float, out: list) -> None:
    t0 = time.monotonic()
    while True:
        out.append((time.monotonic() - t0, *sample(pid)))
        if time.monotonic() + every > until:
            return
        await asyncio.sleep(every)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope, per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return 60 * sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


# ---------------------------------------------------------------- the run

async def drive(args, gw: str, mock: str, cfg: Path, state: Path, pid: int) -> dict:
    rng = random.Random(args.seed)
    t = Tally()
    samples: list = []
    events: list[str] = []
    until = time.monotonic() + args.duration
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        idle_before = sample(pid)
        tasks = [asyncio.create_task(worker(session, gw, random.Random(rng.random()), t, until))
                 for _ in range(args.clients)]
        tasks.append(asyncio.create_task(chaos(session, mock, gw, cfg, state, random.Random(rng.random()),
                                               until, max(4.0, min(30.0, args.duration / 6)), events)))
        tasks.append(asyncio.create_task(sampler(pid, args.sample_s, until, samples)))
        await asyncio.gather(*tasks)
        in_flight = await settle(session, gw)
        async with session.get(f"{mock}/_mock/stats") as r:
            upstream = await r.json()
    await asyncio.sleep(1)
    idle_after = sample(pid)
    return {"tally": t, "samples": samples, "events": events, "upstream": upstream, "in_flight": in_flight,
            "idle_before": idle_before, "idle_after": idle_after}


async def settle(session, gw: str, within: float = 15) -> int:
    """In-flight slots still held once the traffic stopped (waits up to ``within`` s for 0)."""
    deadline = time.monotonic() + within
    while True:
        async with session.get(f"{gw}/_keymux/stats", headers={"x-keymux-admin-token": ADMIN}) as r:
            stats = await r.json()
        held = sum(k.get("in_flight", 0) for k in stats.get("keys", []))
        if held == 0 or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.5)


def _by_status(mock_stats: dict) -> dict:
    """What the mock answered, summed over keys ("0" = a reset, the faults injected)."""
    out: Counter = Counter()
    for per in mock_stats["keys"].values():
        out.update(per["by_status"])
    return dict(sorted(out.items()))


def report(args, res: dict) -> tuple[dict, list[str]]:
    t: Tally = res["tally"]
    lat = sorted(t.latencies)
    pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None)
    s = res["samples"]
    warm = [x for x in s if x[0] >= args.duration * 0.1] or s
    start_, mid, end = warm[0], warm[len(warm) // 2], warm[-1]
    rss_growth_mb = (end[1] - start_[1]) / 1024
    fd_growth = end[2] - start_[2]
    out = {
        "seconds": args.duration, "clients": args.clients, "requests_sent": t.sent, "answered": t.answered,
        "succeeded": t.succeeded, "client_aborts": t.aborted, "errors_by_cause": dict(t.causes.most_common()),
        "lost": sum(t.lost.values()), "lost_by_how": dict(t.lost),
        "upstream_calls_per_request": round(res["upstream"]["total"] / max(1, t.sent), 3),
        "upstream_by_status": _by_status(res["upstream"]),
        "gateway_log_lines": res["log_lines"],
        "gateway_log_other_than_reloads": dict(res["log_kinds"].most_common(10)),
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99)}, "in_flight_after": res["in_flight"],
        "rss_mb": {k: round(v[1] / 1024, 1) for k, v in (("start", start_), ("middle", mid), ("end", end))},
        "rss_slope_mb_per_min": round(slope([(x, r / 1024) for x, r, _ in warm]), 3),
        "fds": {"idle_before": res["idle_before"][1], "start": start_[2], "middle": mid[2], "end": end[2],
                "idle_after": res["idle_after"][1]},
        "fd_slope_per_min": round(slope([(x, f) for x, _, f in warm]), 3),
        "config_rewrites": res["events"],
    }
    failures = []
    if out["lost"]:
        failures.append(f"{out['lost']} lost request(s): {out['lost_by_how']}")
    if any(e.endswith(RELOAD_NOT_SEEN) for e in res["events"]):
        failures.append("a config rewrite was not taken up (see config_rewrites)")
    if res["in_flight"]:
        failures.append(f"{res['in_flight']} in-flight slot(s) still held after the traffic")
    if rss_growth_mb > args.rss_tolerance_mb:
        failures.append(f"RSS grew {rss_growth_mb:.1f} MB (> {args.rss_tolerance_mb})")
    if fd_growth > args.fd_tolerance:
        failures.append(f"open fds grew by {fd_growth} (> {args.fd_tolerance})")
    return out, failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--seconds", type=float, help="run length in seconds (overrides --minutes)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sample-s", type=float, help="RSS/fd sampling period (default: run/20, 1..30 s)")
    p.add_argument("--rss-tolerance-mb", type=float, default=64)
    p.add_argument("--fd-tolerance", type=int, default=32)
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = p.parse_args(argv)
    args.duration = args.seconds if args.seconds is not None else args.minutes * 60
    args.sample_s = args.sample_s or max(1.0, min(30.0, args.duration / 20))

    work = Path(tempfile.mkdtemp(prefix="keymux-soak-"))
    print(f"work directory (config, logs, state): {work}", flush=True)
    mock_port, gw_port = free_port(), free_port()
    mock_url, gw = f"http://127.0.0.1:{mock_port}", f"http://127.0.0.1:{gw_port}"
    cfg, state = work / "keys.yaml", work / "state"
    cfg.write_text(config_text(mock_url, state, 0))
    (work / "behaviours.json").write_text(json.dumps({s: b for _, s, b in KEYS.values()}))
    procs = [start([sys.executable, "-m", "keypool.demo.mock_upstream", "--port", str(mock_port),
                    "--behaviors", str(work / "behaviours.json")], work / "mock.log")]
    os.environ["KEYMUX_ADMIN_TOKEN"] = ADMIN  # the gateway inherits it
    procs.append(start([str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "-p", str(gw_port),
                        "--set", "termlog_verbosity=warn", "--set", "flow_detail=0",
                        "--mode", f"reverse:{mock_url}", "--set", f"confdir={work}",
                        "-s", str(ROOT / "addons/keymux.py"), "--set", f"keymux_config={cfg}"],
                       work / "mitmdump.log"))
    try:
        wait_up(f"{mock_url}/_mock/health", procs[0])
        wait_up(f"{gw}/health", procs[1])
        print(f"soaking for {args.duration:g} s with {args.clients} clients ...", flush=True)
        res = asyncio.run(drive(args, gw, mock_url, cfg, state, procs[1].pid))
    finally:
        stop(procs)
    # only warnings and errors reach the log (the broken rewrites are expected there)
    lines = (work / "mitmdump.log").read_text(errors="replace").splitlines()
    res["log_lines"] = len(lines)
    res["log_kinds"] = Counter(line.split("] ", 1)[-1][:120] for line in lines if "config reloaded" not in line)
    out, failures = report(args, res)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    print("soak:", "FAILED" if failures else "ok", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
