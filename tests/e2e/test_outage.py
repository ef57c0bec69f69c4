"""A provider outage end to end: every key answers 503 for a while, then the upstream recovers.

Real mitmdump + keymux in front of the mock (``for_s``: every key fails for that long after
the behaviour is set, then serves again), driven by a few client threads over raw HTTP.
The gateway must back off the provider (a trickle of probes, fast 503s with Retry-After)
and serve again within 3 s of the recovery, with no key parked by escalation.
"""
import http.client
import json
import threading
import time
import urllib.request

import pytest

from .harness import GatewayProcess

KEYS = [f"sk-outage-key-{i:012d}" for i in range(1, 5)]
OUTAGE_S = 4.5
AFTER_S = 4.5       # traffic keeps going this long after the recovery
WORKERS = 6
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def yaml(mock_url):
    keys = "\n".join(f"  - {{name: o{i}, provider: mock, key: {k}}}" for i, k in enumerate(KEYS, 1))
    # keymux's default cooldowns: a key escalated by the outage would rest 5, 10, 20 s...
    return (f"providers:\n  mock:\n    base_url: {mock_url}/v1\n    models: [\"gpt-*\"]\n"
            f"keys:\n{keys}\nrouting:\n  max_attempts: 4\n  timeout_s: 10\n")


@pytest.fixture(scope="module")
def gw(mock, tmp_path_factory, confdir):
    with GatewayProcess(tmp_path_factory.mktemp("outage"), yaml(mock.base_url),
                        confdir=confdir) as g:
        yield g


def get(gw, path):
    with urllib.request.urlopen(gw.url + path, timeout=5) as r:
        return r.read()


def worker(port, stop_at, out):
    """A client: one request after another, 50 ms apart; each (start, status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while time.monotonic() < stop_at:
        t = time.monotonic()
        try:
            conn.request("POST", "/v1/chat/completions", BODY,
                         {"content-type": "application/json", "authorization": "Bearer any"})
            r = conn.getresponse()
            body = r.read()
            out.append((t, r.status, r.getheader("retry-after"), body))
        except OSError:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            out.append((t, 0, None, b""))
        time.sleep(0.05)
    conn.close()


def test_outage_backs_off_the_provider_and_recovers_within_3_s(gw, mock):
    get(gw, "/v1/models")  # warm up
    mock.set_default(status=503, for_s=OUTAGE_S)
    set_wall = time.time()
    recovery = time.monotonic() + OUTAGE_S  # the mock shares this process's clock
    results: list = []
    threads = [threading.Thread(target=worker, args=(gw.port, recovery + AFTER_S, results))
               for _ in range(WORKERS)]
    for t in threads:
        t.start()
    seen_outage = False
    while time.monotonic() < recovery - 0.5:  # the outage shows in stats and metrics
        stats = json.loads(get(gw, "/_keymux/stats"))
        if stats["providers"]["mock"]["state"] == "outage":
            metrics = get(gw, "/metrics").decode()
            seen_outage = 'keymux_provider_outage{provider="mock"} 1.0' in metrics
            assert all(k["state"] == "ok" for k in stats["keys"])  # no key parked
            break
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=AFTER_S + OUTAGE_S + 15)
    assert seen_outage

    during = [r for r in results if r[0] < recovery]
    refused = [r for r in during if r[1] == 503]
    assert len(refused) >= 0.8 * len(during) and len(during) > 30
    doc = json.loads(refused[-1][3])
    assert doc["error"]["code"] == "provider_outage" and int(refused[-1][2]) >= 1
    # a trickle: the attempts that found the outage, then about one probe a second
    upstream = [r for r in mock.requests() if r["status"] == 503]
    assert len(upstream) <= WORKERS + 4 + OUTAGE_S / 0.375
    late = [r for r in upstream if r["time"] > set_wall + 2.0]
    assert len(late) <= 2 + (OUTAGE_S - 2.0) / 0.5

    first_ok = min(r[0] for r in results if r[1] == 200 and r[0] >= recovery - 0.5)
    assert first_ok - recovery <= 3.0
    settled = [r for r in results if r[0] >= recovery + 3.0]
    assert len(settled) > 10
    assert sum(r[1] == 200 for r in settled) >= 0.95 * len(settled)
    stats = json.loads(get(gw, "/_keymux/stats"))
    assert stats["providers"]["mock"] == {"state": "ok"}
    assert all(k["state"] == "ok" for k in stats["keys"])
    log = gw.log()
    assert log.count("provider 'mock' is down") == 1 and log.count("provider 'mock' is back") == 1
