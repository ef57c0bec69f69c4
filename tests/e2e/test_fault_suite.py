"""Upstream faults end to end (issue 8, item 10): every way an upstream can misbehave at
the socket level gets the client a clean answer in bounded time, frees the key's slot and
forwards nothing anywhere else."""
import http.client
import json
import time

import pytest

from .harness import GatewayProcess, free_port
from .hostile import HostileUpstream
from .test_fail_closed import Trap, in_flight, wait_for

ADMIN = "kmx-admin-token-for-fault-tests-0001"
WAYS = ("reset-before-headers", "reset-mid-body", "reset-mid-stream", "no-headers", "trickle",
        "forever", "malformed-json", "malformed-sse", "error-200", "absurd-retry-after")
MAX_S = 5


def config(hostile_url: str, refused_port: int) -> str:
    providers = {w: f"{hostile_url}/{w}/v1" for w in WAYS}
    providers["refused"] = f"http://127.0.0.1:{refused_port}/v1"
    lines = ["version: 1", "providers:"]
    lines += [f"  {name}:\n    base_url: {url}" for name, url in providers.items()]
    lines.append("keys:")
    lines += [f"  - {{name: {name}-{i}, provider: {name}, key: sk-{name}-secret-000{i}}}"
              for name in providers for i in (1, 2)]
    lines.append("routing:\n  max_attempts: 2\n  timeout_s: 3\n  queue_s: 0\n"
                 f"  cooldown: {{server_error_s: 1, rate_limited_s: 2, max_s: {MAX_S}}}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def hostile():
    h = HostileUpstream()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def gw(hostile, tmp_path_factory, confdir):
    trap = Trap()
    work = tmp_path_factory.mktemp("faultsuite")
    with GatewayProcess(work, config(hostile.url, free_port()), confdir=confdir,
                        env={"KEYMUX_ADMIN_TOKEN": ADMIN},
                        reverse=f"http://127.0.0.1:{trap.port}") as g:
        g.trap = trap
        yield g
    trap.sock.close()


def post(gw, provider, stream=False, timeout=15):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"content-type": "application/json", "x-keymux-provider": provider,
                  "authorization": "Bearer anything"})
    return conn, conn.getresponse()


def reset_keys(gw, provider):
    for i in (1, 2):
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        c.request("POST", f"/_keymux/keys/{provider}-{i}/reset",
                  headers={"x-keymux-admin-token": ADMIN})
        c.getresponse().read()


@pytest.fixture(autouse=True)
def _settled(gw):
    yield
    assert wait_for(lambda: in_flight(gw) == 0), "a key's slot leaked"
    assert gw.trap.hits == 0, "a request reached the reverse target"


def error_code(resp) -> str:
    return json.loads(resp.read())["error"]["code"]


@pytest.mark.parametrize("provider", ["refused", "reset-before-headers", "reset-mid-body"])
def test_no_answer_is_re_issued_then_a_clean_5xx(gw, provider):
    reset_keys(gw, provider)
    _, resp = post(gw, provider)
    assert resp.status in (502, 503)
    assert error_code(resp) in ("upstream_failed", "provider_outage")


@pytest.mark.parametrize("provider", ["no-headers", "trickle"])
def test_silence_and_trickling_end_at_timeout_s(gw, provider):
    reset_keys(gw, provider)
    started = time.monotonic()
    _, resp = post(gw, provider)
    assert resp.status == 504 and error_code(resp) == "timeout"
    assert time.monotonic() - started < 3 + 2


def test_a_stream_reset_mid_way_ends_the_clients_stream(gw):
    reset_keys(gw, "reset-mid-stream")
    conn, resp = post(gw, "reset-mid-stream", stream=True)
    assert resp.status == 200
    got = b""
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        while chunk := resp.read1(65536):
            got += chunk
        raise ConnectionError("ended")  # a clean end also ends it; the point is: no hang
    assert b"chat.completion.chunk" in got


def test_an_endless_stream_ends_when_the_client_leaves(gw, hostile):
    reset_keys(gw, "forever")
    conn, resp = post(gw, "forever", stream=True)
    assert resp.status == 200 and resp.read1(65536)
    conn.close()
    assert wait_for(lambda: "forever" in hostile.closed, timeout=15)


@pytest.mark.parametrize("provider,expect", [
    ("malformed-json", b'{"id":"x","choices":[{"message":'),
    ("error-200", b'"overloaded"'),
])
def test_malformed_or_error_200_bodies_reach_the_client_as_they_are(gw, provider, expect):
    reset_keys(gw, provider)
    _, resp = post(gw, provider)
    assert resp.status == 200 and expect in resp.read()


def test_malformed_sse_passes_through_and_ends(gw):
    reset_keys(gw, "malformed-sse")
    _, resp = post(gw, "malformed-sse", stream=True)
    assert resp.status == 200 and resp.read().endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("value", ["1e12", "-1", "garbage", "Fri, 01 Jan 9999 00:00:00 GMT"])
def test_an_absurd_retry_after_is_capped_by_max_s(gw, hostile, value):
    hostile.retry_after = value
    reset_keys(gw, "absurd-retry-after")
    _, resp = post(gw, "absurd-retry-after")
    assert resp.status == 429, resp.read()
    assert 1 <= int(resp.headers["retry-after"]) <= MAX_S
    stats = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    stats.request("GET", "/_keymux/stats", headers={"x-keymux-admin-token": ADMIN})
    keys = {k["name"]: k for k in json.loads(stats.getresponse().read())["keys"]}
    for i in (1, 2):
        left = keys[f"absurd-retry-after-{i}"].get("cooldown_s") or 0
        assert left <= MAX_S + 0.5
