"""Fail closed, proven by fault injection (issue 8, item 1).

Each step of a request raises in turn (tests/e2e/faults.py, loaded after keymux). For
every one: the client gets a clean error, nothing reaches any host but through keymux's
own sender (the ``--mode reverse:`` target is a trap that counts connections), the pool's
in-flight counters return to zero, and the log holds the traceback with every secret
masked.
"""
import http.client
import json
import socket
import threading
from pathlib import Path

import openai
import pytest

from keypool.redact import mask

from .conftest import CLIENT_TOKEN, K1, K2, pool_yaml
from . import harness
from .harness import GatewayProcess

ADMIN = "kmx-admin-token-for-fault-tests-0001"
FAULTS = Path(__file__).with_name("faults.py")


class Trap:
    """A TCP server that only counts who connects: the reverse target must never be used."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.close()


@pytest.fixture(scope="module")
def trap():
    t = Trap()
    yield t
    t.sock.close()


@pytest.fixture(scope="module")
def gw(mock, trap, tmp_path_factory, confdir):
    work = tmp_path_factory.mktemp("faults")
    fault = work / "fault.txt"
    fault.write_text("")
    clients = f"clients:\n  - name: app\n    token: {CLIENT_TOKEN}\n"
    env = {"MOCK_KEY_2": K2, "KEYMUX_ADMIN_TOKEN": ADMIN, "KEYMUX_FAULT_FILE": str(fault),
           "KEYMUX_FAULT_MESSAGE": f"{K1} {CLIENT_TOKEN}"}
    with GatewayProcess(work, pool_yaml(mock.base_url, clients), env=env, confdir=confdir,
                        reverse=f"http://127.0.0.1:{trap.port}", scripts=(FAULTS,)) as g:
        g.fault = fault
        yield g


def wait_for(cond, timeout=10.0):
    return harness.wait_for(cond, timeout)


def in_flight(gw) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    conn.request("GET", "/_keymux/stats", headers={"x-keymux-admin-token": ADMIN})
    body = json.loads(conn.getresponse().read())
    return body["totals"]["in_flight"]


def chat(gw, stream=False):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_TOKEN, max_retries=0,
                           timeout=15)
    kw = dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(stream=True, **kw) if c.choices)
    return client.chat.completions.create(**kw).choices[0].message.content


def _check(gw, trap, mock, step, log_from):
    gw.fault.write_text("")  # the stats below pass through admit too
    assert trap.hits == 0, f"{step}: a request reached the reverse target"
    assert all(r["key"] != mask(CLIENT_TOKEN) for r in mock.requests())
    assert wait_for(lambda: in_flight(gw) == 0), f"{step}: a key's slot leaked"
    log = gw.log()[log_from:]
    assert "keymux: internal error in" in log and f"injected fault in {step}" in log, log[-2000:]
    for secret in (K1, K2, CLIENT_TOKEN):
        assert secret not in log
    assert chat(gw)  # and the gateway serves again


@pytest.mark.parametrize("step", ["admit", "pick", "send", "judge", "finish", "complete",
                                  "relay", "responseheaders"])
def test_a_fault_before_the_answer_is_a_clean_500(gw, trap, mock, step):
    log_from = len(gw.log())
    gw.fault.write_text(step)
    stream = step in ("relay", "responseheaders")
    with pytest.raises(openai.InternalServerError) as e:
        chat(gw, stream=stream)
    assert e.value.status_code == 500
    assert e.value.body["code"] == "keymux_internal_error", e.value.body
    _check(gw, trap, mock, step, log_from)


def test_a_fault_when_a_stream_ends_still_releases_its_key(gw, trap, mock):
    log_from = len(gw.log())
    gw.fault.write_text("response")
    assert chat(gw, stream=True)  # the client already has its whole stream
    # mitmproxy runs the response hook once the last chunk is out: maybe after the client
    # has read it, so wait for the hook before the fault is lifted
    assert wait_for(lambda: "injected fault in response" in gw.log()[log_from:])
    _check(gw, trap, mock, "response", log_from)


def test_a_fault_when_a_stream_breaks_off_still_releases_its_key(gw, trap, mock):
    log_from = len(gw.log())
    mock.set_default(chunks=40, chunk_delay_ms=100)
    gw.fault.write_text("error")
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
    conn.request("POST", "/v1/chat/completions", body,
                 {"authorization": f"Bearer {CLIENT_TOKEN}", "content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read1(100)
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client leaves mid-stream
    conn.close()
    assert wait_for(lambda: "internal error in error" in gw.log()[log_from:])
    mock.set_default(chunks=5, chunk_delay_ms=0)
    _check(gw, trap, mock, "error", log_from)


def test_a_failing_store_flush_is_logged_once_and_serving_goes_on(gw, trap, mock):
    log_from = len(gw.log())
    gw.fault.write_text("store flush")
    assert wait_for(lambda: "internal error in store flush" in gw.log()[log_from:])
    assert chat(gw)
    assert wait_for(lambda: gw.log()[log_from:].count("internal error in store flush") == 1)
    _check(gw, trap, mock, "store flush", log_from)


def test_the_guard_answers_a_request_keymux_neither_answered_nor_routed(gw, trap):
    """A bug that returns without answering: mitmproxy would forward it; the guard refuses."""
    gw.fault.write_text("")
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    # keymux's own request hook skips flows that already have an error or response; the
    # guard is tested in-process (tests/unit/test_glue_failclosed.py) for the rest.
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    assert trap.hits == 0


def test_a_config_that_fails_to_load_exits_1_not_0(tmp_path, confdir):
    """The clean-exit handler (runtime.exit_cleanly_at_exit) only covers a requested
    shutdown: an error at start-up still ends mitmdump with status 1."""
    g = GatewayProcess(tmp_path, "keys: [\n", confdir=confdir)
    with pytest.raises(RuntimeError, match="exited 1"):
        g.start(timeout=20)
