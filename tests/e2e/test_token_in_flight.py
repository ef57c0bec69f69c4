"""The client's token is in no flow at any moment: read through the real mitmweb's API
while a request is still in flight (a slow upstream, a slow stream, a body the client is
still sending), and after; in a -w file, in mitmdump's flow_detail=4 output, and in what a
user script loaded *before* keymux sees (keypool.mitm.clientauth)."""
import http.client
import json
import socket
import threading
import time
import urllib.error

import openai
import pytest

from .conftest import CLIENT_TOKEN, K1, K2, SECRETS, pool_yaml
from .harness import ROOT, GatewayProcess, wait_for
from .mitmweb import MitmWeb

ADMIN = "kmx-in-flight-admin-token-5e5e5e5e"
CLIENTS = f"""
clients:
  - name: app
    token: {CLIENT_TOKEN}
"""
MASKED = "Bearer kmx…3456"  # redact.mask_credential of "Bearer " + CLIENT_TOKEN
NEEDLES = [s.encode() for s in (CLIENT_TOKEN, ADMIN, *SECRETS)]
# A user script's view of every flow, at each hook; loaded before keymux's own script.
SPY = '''
import json
PATH = {path!r}

def _write(hook, flow):
    with open(PATH, "a") as f:
        f.write(json.dumps([hook, flow.request.headers.get("authorization"),
                            flow.request.headers.get("x-api-key")]) + "\\n")

def requestheaders(flow): _write("requestheaders", flow)
def request(flow): _write("request", flow)
def response(flow): _write("response", flow)
'''


def leaks(blob: bytes) -> list[bytes]:
    return [n for n in NEEDLES if n in blob]


def spy_script(work):
    seen = work / "spy.jsonl"
    path = work / "spy.py"
    path.write_text(SPY.format(path=str(seen)))
    return path, seen


@pytest.fixture(scope="module")
def web(mock, tmp_path_factory, confdir):
    work = tmp_path_factory.mktemp("web")
    spy, seen = spy_script(work)
    with GatewayProcess(work, pool_yaml(mock.base_url, CLIENTS), env={
            "MOCK_KEY_2": K2, "KEYMUX_ADMIN_TOKEN": ADMIN}, confdir=confdir, web=True,
            script=spy, scripts=(ROOT / "addons" / "keymux.py",)) as gw:
        gw.spied = seen
        yield gw


def client(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_TOKEN, max_retries=0, timeout=20)


def hi(**kw):
    return dict(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], **kw)


class Watch:
    """Reads everything mitmweb serves about its flows, again and again, and fails at the
    first read that holds a secret. Counts the reads that saw a flow still in flight."""

    def __init__(self, web: MitmWeb):
        self.web, self.reads, self.in_flight, self.masked_seen = web, 0, 0, False

    def once(self) -> None:
        listing = self.web.raw("/flows")
        assert not leaks(listing), listing
        flows = json.loads(listing)
        for f in flows:
            for name in ("request", "response"):
                if (f.get(name) or {}).get("contentLength") is None:
                    continue  # no body (yet, or streamed): mitmweb answers 500 for it
                body = self.web.content(f["id"], name)
                assert not leaks(body), (f["id"], name)
            self.masked_seen |= any(k.lower() == "authorization" and v == MASKED
                                    for k, v in f["request"]["headers"])
        dump = self.web.dump()
        assert not leaks(dump), leaks(dump)
        self.reads += 1
        self.in_flight += any(f.get("response") is None or
                              f["response"].get("timestamp_end") is None for f in flows)

    def during(self, work, timeout: float = 20) -> None:
        """Read while ``work`` runs on a thread; then once more after it ended."""
        done, error = threading.Event(), []

        def run():
            try:
                work()
            except BaseException as e:  # re-raised on the test's thread
                error.append(e)
            finally:
                done.set()

        threading.Thread(target=run, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < deadline:
            self.once()
            done.wait(0.02)  # a poll interval: leave the two cores to the gateway
        assert done.wait(max(0.0, deadline - time.monotonic())), "the request did not end"
        self.once()
        if error:
            raise error[0]


def test_slow_upstream_the_token_is_never_shown(web, mock):
    mock.set_default(delay_ms=1500)
    watch = Watch(MitmWeb.of(web))
    watch.web.clear()
    watch.during(lambda: client(web).chat.completions.create(**hi()))
    assert watch.in_flight >= 2 and watch.masked_seen, vars(watch)


def test_slow_stream_the_token_is_never_shown(web, mock):
    mock.set_default(chunk_delay_ms=300, chunks=5)
    watch = Watch(MitmWeb.of(web))
    watch.web.clear()

    def stream():
        chunks = list(client(web).chat.completions.create(**hi(stream=True)))
        assert chunks

    watch.during(stream)  # the stream's head comes at once: the client header is short-lived
    assert watch.in_flight >= 2, vars(watch)


def test_slow_request_body_the_token_is_never_shown(web, mock):
    """The flow is in mitmweb's list from its head on (View.requestheaders), long before
    keymux's request hook runs: the client here is still sending its body."""
    web_api = MitmWeb.of(web)
    web_api.clear()
    body = json.dumps(hi()).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{web.port}\r\n"
            f"Authorization: Bearer {CLIENT_TOKEN}\r\nX-Keymux-Admin-Token: {ADMIN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    watch = Watch(web_api)
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as s:
        s.sendall(head + body[:5])
        assert wait_for(lambda: any(f["request"]["path"] == "/v1/chat/completions"
                                    for f in web_api.flows()), timeout=5)
        for i in range(5, len(body), max(1, len(body) // 5)):  # the rest, in pieces
            watch.once()
            s.sendall(body[i:i + max(1, len(body) // 5)])
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    watch.once()
    assert watch.in_flight >= 3 and watch.masked_seen, vars(watch)


def test_a_script_loaded_before_keymux_sees_only_the_masked_token(web, mock):
    client(web).chat.completions.create(**hi())
    for hook, auth, _ in (json.loads(line) for line in web.spied.read_text().splitlines()):
        assert auth is None or CLIENT_TOKEN not in auth and ADMIN not in auth, (hook, auth)
    hooks = {hook for hook, auth, _ in map(json.loads, web.spied.read_text().splitlines())
             if auth == MASKED}
    assert "requestheaders" in hooks


def test_mitmdump_w_file_and_flow_detail_4_hold_no_token(mock, tmp_path, confdir):
    flows = tmp_path / "flows.mitm"
    mock.set_default(delay_ms=800)
    with GatewayProcess(tmp_path, pool_yaml(mock.base_url, CLIENTS), env={
            "MOCK_KEY_2": K2, "KEYMUX_ADMIN_TOKEN": ADMIN}, confdir=confdir,
            args=("-v", "-w", str(flows), "--set", "flow_detail=4")) as gw:
        done, error = threading.Event(), []

        def work():
            try:
                client(gw).chat.completions.create(**hi())
                conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
                conn.request("POST", "/v1/chat/completions", json.dumps(hi()),
                             {"x-api-key": CLIENT_TOKEN, "content-type": "application/json"})
                assert conn.getresponse().status == 200
                conn.close()
            except BaseException as e:
                error.append(e)
            finally:
                done.set()

        threading.Thread(target=work, daemon=True).start()
        while not done.wait(0.1):
            assert not leaks(gw.log_path.read_bytes())
            if flows.exists():
                assert not leaks(flows.read_bytes())
        assert not error, error
        # flow_detail=4 printed both flows, headers and all (the pool key masked).
        assert wait_for(lambda: gw.log().count("authorization: Bearer sk-") >= 2)
    assert not leaks(gw.log_path.read_bytes())
    assert flows.stat().st_size > 0 and not leaks(flows.read_bytes())


def test_the_mitmweb_client_runs_commands_and_filters(web, mock):
    """The harness's API client itself (others build on it): a command through the XSRF
    check, a filtered dump, and the password being required."""
    api = MitmWeb.of(web)
    api.clear()
    client(web).chat.completions.create(**hi())
    assert wait_for(lambda: len(api.flows()) == 1)
    assert api.command("view.properties.length") == {"value": 1}
    assert "error" in api.command("view.no.such.command")
    assert len(api.dump_flows("~u /v1/chat")) == 1 and api.dump_flows("~u /nowhere") == []
    with pytest.raises(urllib.error.HTTPError) as e:
        MitmWeb(web.web_url, "wrong-password").flows()
    assert e.value.code == 403
