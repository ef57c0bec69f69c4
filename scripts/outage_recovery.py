#!/usr/bin/env python3
"""A provider outage and its recovery, measured: every key answers 503 for 20 s, then serves.

Starts the mock upstream (in this process, so its outage timer and these measurements share
one clock) and a real mitmdump with keymux in front of it: one provider, four keys,
keymux's default routing and cooldowns. A few client threads send one small chat
completion after another (closed loop, 50 ms apart, no client retries; with
``--honour-retry-after`` a client that gets a 503 waits what Retry-After says, as the
openai and anthropic SDKs do when they retry). After a healthy warm-up the mock answers
503 on every key for ``--outage`` seconds (behaviour ``for_s``), then recovers; traffic
goes on for ``--after`` seconds. Printed:

    requests during the outage, and how many got keymux's 503 (provider_outage)
    upstream calls during the outage (what the provider saw)
    time from the recovery to the first success
    success rate of requests sent in the 3 s after the recovery, and after that

    .venv/bin/python scripts/outage_recovery.py [--outage 20] [--after 8] [--workers 8]
                                                [--honour-retry-after]

Loopback only; the mitmdump it starts is stopped by PID.
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import ROOT, free_port, start, stop, wait_up
from keypool.demo.mock_upstream import MockUpstream

KEYS = [f"sk-outage-demo-{i:012d}" for i in range(1, 5)]
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def config(mock_url: str) -> str:
    keys = "\n".join(f"  - {{name: k{i}, provider: mock, key: {k}}}" for i, k in enumerate(KEYS, 1))
    return (f"providers:\n  mock:\n    base_url: {mock_url}/v1\n    models: [\"gpt-*\"]\n"
            f"keys:\n{keys}\n")


def client(port: int, stop_at: float, honour: bool, out: list) -> None:
    """(sent, latency, status, code) per request until ``stop_at``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.monotonic() < stop_at:
        t = time.monotonic()
        wait = 0.05
        try:
            conn.request("POST", "/v1/chat/completions", BODY,
                         {"content-type": "application/json", "authorization": "Bearer any"})
            r = conn.getresponse()
            body = r.read()
            code = r.getheader("x-keymux-error") or ""
            out.append((t, time.monotonic() - t, r.status, code))
            if honour and r.status in (429, 503) and r.getheader("retry-after"):
                wait = float(r.getheader("retry-after"))
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            out.append((t, time.monotonic() - t, 0, "connection"))
        time.sleep(min(wait, max(0.0, stop_at - time.monotonic())))
    conn.close()


def rate(rows: list) -> str:
    if not rows:
        return "no requests"
    ok = sum(r[2] == 200 for r in rows)
    return f"{100.0 * ok / len(rows):.1f}% ({ok}/{len(rows)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--outage", type=float, default=20.0)
    ap.add_argument("--after", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--honour-retry-after", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="keymux-outage-"))
    procs = []
    with MockUpstream() as mock:
        (work / "keys.yaml").write_text(config(mock.base_url))
        port = free_port()
        mitmdump = Path(sys.executable).with_name("mitmdump")
        procs.append(start([str(mitmdump), "-s", str(ROOT / "addons" / "keymux.py"),
                            "--mode", "reverse:https://api.openai.com", "--listen-host",
                            "127.0.0.1", "-p", str(port), "--set",
                            f"keymux_config={work / 'keys.yaml'}", "--set",
                            f"confdir={work / 'mitmproxy'}"], work / "mitmdump.log"))
        try:
            wait_up(f"http://127.0.0.1:{port}/health", procs[0])
            t0 = time.monotonic()
            outage_at = t0 + args.warmup
            recovery = outage_at + args.outage
            stop_at = recovery + args.after
            rows: list = []
            threads = [threading.Thread(target=client, args=(port, stop_at,
                                                             args.honour_retry_after, rows))
                       for _ in range(args.workers)]
            for t in threads:
                t.start()
            time.sleep(max(0.0, outage_at - time.monotonic()))
            mock.set_default(status=503, for_s=args.outage)
            outage_wall, outage_at = time.time(), time.monotonic()
            recovery = outage_at + args.outage
            for t in threads:
                t.join()
            upstream = [r for r in mock.requests() if outage_wall <= r["time"] < outage_wall + args.outage]
        finally:
            stop(procs)
    report(args, rows, upstream, outage_at, recovery, work)
    return 0


def report(args, rows, upstream, outage_at, recovery, work) -> None:
    during = [r for r in rows if outage_at <= r[0] < recovery]
    refused = [r for r in during if r[2] == 503 and r[3] == "provider_outage"]
    first_ok = min((r[0] + r[1] for r in rows if r[2] == 200 and r[0] + r[1] >= recovery),
                   default=None)
    sent_ok = min((r[0] for r in rows if r[2] == 200 and r[0] >= recovery - 0.5), default=None)
    by_status: dict = {}
    for r in during:
        by_status[f"{r[2]} {r[3]}".strip()] = by_status.get(f"{r[2]} {r[3]}".strip(), 0) + 1
    print(f"outage {args.outage:g} s on all 4 keys, {args.workers} clients"
          f"{' honouring Retry-After' if args.honour_retry_after else ' (50 ms apart, no retries)'}")
    print(f"requests during the outage:         {len(during)}  {by_status}")
    print(f"  answered 503 provider_outage:     {len(refused)}"
          + (f"  (median {1000 * statistics.median(r[1] for r in refused):.1f} ms)" if refused else ""))
    print(f"upstream calls during the outage:   {len(upstream)}"
          f"  (after its first 2 s: {sum(r['time'] >= upstream[0]['time'] + 2 for r in upstream) if upstream else 0})")
    print("time from recovery to first success: "
          + (f"{first_ok - recovery:.2f} s (answered), {sent_ok - recovery:.2f} s (sent)"
             if first_ok is not None else "never"))
    print(f"success rate, sent in the 3 s after recovery: "
          f"{rate([r for r in rows if recovery <= r[0] < recovery + 3])}")
    print(f"success rate, sent after that:                "
          f"{rate([r for r in rows if r[0] >= recovery + 3])}")
    print(f"(gateway log and config: {work})")


if __name__ == "__main__":
    sys.exit(main())
