"""Hostile requests against a real mitmdump: one canonical path, clear 4xx, nothing upstream.

Raw sockets and http.client, because SDKs and urllib normalise exactly what is tested here.
"""
import gzip
import http.client
import json
import socket
import time
from pathlib import Path

import pytest

from .conftest import K2, pool_yaml
from .harness import GatewayProcess

TOKEN = "kmx-hostile-client-token-0001"
EXTRA = f"""
clients:
  - name: app
    token: {TOKEN}
    models: ["gpt-4o-mini"]
routing:
  max_body_mb: 1
"""
AUTH = {"authorization": f"Bearer {TOKEN}"}
ALLOWED = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
FORBIDDEN = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gw(mock, tmp_path_factory, confdir):
    work = tmp_path_factory.mktemp("hostile")
    with GatewayProcess(work, pool_yaml(mock.base_url, EXTRA), env={"MOCK_KEY_2": K2},
                        confdir=confdir) as g:
        yield g


def send(gw, method, target, body=None, headers=None, timeout=20):
    """One request with http.client, the target exactly as given (no normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        h = {"content-type": "application/json", **AUTH, **(headers or {})}
        conn.putrequest(method, target, skip_accept_encoding=True)
        for k, v in h.items():
            conn.putheader(k, v)
        if data is not None:
            conn.putheader("content-length", str(len(data)))
        conn.endheaders(data)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def raw_exchange(gw, payload: bytes, timeout=20) -> bytes:
    """Bytes in, whatever comes back until the gateway closes (or a full JSON answer)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as s:
        s.sendall(payload)
        return _read_answer(s)


def _read_answer(s: socket.socket) -> bytes:
    out = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        out += chunk
        head, sep, body = out.partition(b"\r\n\r\n")
        if sep:
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            if length and len(body) >= length[0]:
                break
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def openai_error(body: bytes) -> dict:
    err = json.loads(body)["error"]
    assert set(err) >= {"message", "type", "code"}
    return err


def assert_refused(answer, status, code=None):
    got, headers, body = answer
    assert got == status, body
    err = openai_error(body)
    if code:
        assert err["code"] == code
    return err


@pytest.mark.parametrize("target", [
    "/v1/./chat/completions", "/x/../v1/chat/completions", "//v1//chat/completions",
    "/v1/%63hat/completions", "/v1/chat/completions/",
])
def test_allow_list_holds_for_every_spelling(gw, mock, target):
    assert_refused(send(gw, "POST", target, FORBIDDEN), 403, "model_not_allowed")
    assert mock.count() == 0
    status, _, body = send(gw, "POST", target, ALLOWED)
    assert status == 200, body
    assert [r["path"] for r in mock.requests()] == ["/v1/chat/completions"]


def test_content_type_spelling_does_not_skip_the_model(gw, mock):
    for ctype in ("Application/JSON; charset=utf-8", "text/plain"):
        assert_refused(send(gw, "POST", "/v1/chat/completions", FORBIDDEN,
                            {"content-type": ctype}), 403, "model_not_allowed")
    assert mock.count() == 0


def test_canonical_stream_gets_usage_injected(gw, mock):
    body = {**ALLOWED, "stream": True}
    status, headers, data = send(gw, "POST", "/v1/./chat//completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert mock.requests()[0]["body"]["stream_options"] == {"include_usage": True}


def test_query_is_kept_as_sent(gw, mock):
    status, _, _ = send(gw, "POST", "/v1/chat/completions?a=1&b=%2F", ALLOWED)
    assert status == 200
    assert mock.requests()[0]["path"] == "/v1/chat/completions?a=1&b=%2F"


@pytest.mark.parametrize("target, status", [
    ("/v1/../../../internal/admin", 400),
    ("/v1/chat/completions#fragment", 400),
    ("/v1/chat%2fcompletions", 400),
    ("/v1/chat/completions;jsessionid=1", 400),
    ("/v1/%2e%2e/%2e%2e/internal", 400),
    ("/v1/chat/" + "a" * 9000, 414),
])
def test_bad_paths_never_reach_the_upstream(gw, mock, target, status):
    assert_refused(send(gw, "POST", target, ALLOWED), status)
    assert mock.count() == 0


@pytest.mark.parametrize("body, code", [
    (json.dumps(FORBIDDEN).encode("utf-16"), "invalid_json"),
    (b'{"model": "gpt-4o-mini", "x": "\xff"}', "invalid_json"),
    (b'{"model":"gpt-4o-mini","x":' + b"[" * 3000 + b"]" * 3000 + b"}", "invalid_json"),
    (b'{"model": "gpt-4o-mini", "mod\\u0065l": "gpt-4o"}', "invalid_json"),
    (b'{"model": ["gpt-4o"]}', "invalid_model"),
    (b'{"model": "gpt-4o\\u0000"}', "invalid_model"),
    (b'{"model": "openai/\\ud800"}', "invalid_model"),
    (json.dumps({**ALLOWED, "api_base": "http://127.0.0.1:1"}).encode(), "unsupported_field"),
])
def test_unreadable_bodies_are_400(gw, mock, body, code):
    assert_refused(send(gw, "POST", "/v1/chat/completions", body), 400, code)
    assert mock.count() == 0


def test_stream_options_null_is_not_duplicated(gw, mock):
    body = b'{"model":"gpt-4o-mini","stream":true,"stream_options":null,"messages":[]}'
    status, _, _ = send(gw, "POST", "/v1/chat/completions", body)
    assert status == 200
    assert mock.requests()[0]["body"]["stream_options"] == {"include_usage": True}


def test_gzip_body_is_inflated_for_upstream(gw, mock):
    status, _, body = send(gw, "POST", "/v1/chat/completions",
                           gzip.compress(json.dumps(ALLOWED).encode()),
                           {"content-encoding": "gzip"})
    assert status == 200, body
    rec = mock.requests()[0]
    assert rec["body"]["model"] == "gpt-4o-mini" and "content-encoding" not in rec["headers"]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_gzip_bomb_is_refused_before_inflating(gw, mock):
    bomb = gzip.compress(b"\0" * (512 * 1024 * 1024), compresslevel=9)  # ~500 KB
    assert len(bomb) < 1024 * 1024
    before = _rss_kb(gw.proc.pid)
    assert_refused(send(gw, "POST", "/v1/chat/completions", bomb,
                        {"content-encoding": "gzip", "authorization": "Bearer wrong-token"}),
                   401, "invalid_client_token")
    assert_refused(send(gw, "POST", "/v1/chat/completions", bomb, {"content-encoding": "gzip"}),
                   413, "request_too_large")
    assert_refused(send(gw, "POST", "/v1/chat/completions", b"x", {"content-encoding": "lzw"}),
                   415, "unsupported_encoding")
    assert mock.count() == 0
    assert _rss_kb(gw.proc.pid) - before < 100 * 1024  # never near the 512 MB inflated


def test_content_length_over_the_limit_is_413_unread(gw, mock):
    """mitmproxy's body_size_limit (= max_body_mb) answers on the head alone: the 413
    arrives while the client has sent none of its 50 MB, and the connection is closed."""
    before = _rss_kb(gw.proc.pid)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % (50 * 1024 * 1024))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=20) as s:
        s.sendall(head)
        answer = _read_answer(s)
        assert s.recv(1) == b""  # closed: the body will never be read
    assert status_of(answer) == 413
    assert openai_error(answer.partition(b"\r\n\r\n")[2])["code"] == "request_too_large"
    assert _rss_kb(gw.proc.pid) - before < 30 * 1024
    assert mock.count() == 0


def test_chunked_body_over_the_limit_is_413(gw, mock):
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=20) as s:
        s.sendall(head)
        try:
            for _ in range(64):  # 4 MB, the limit is 1 MB
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_answer(s)
    assert status_of(answer) == 413
    assert openai_error(answer.partition(b"\r\n\r\n")[2])["code"] == "request_too_large"
    assert mock.count() == 0


def test_oversized_headers_are_431_and_blame_no_key(gw, mock):
    assert_refused(send(gw, "POST", "/v1/chat/completions", ALLOWED,
                        {"x-filler": "a" * (70 * 1024)}), 431, "headers_too_large")
    assert mock.count() == 0
    status, _, _ = send(gw, "POST", "/v1/chat/completions", ALLOWED)
    assert status == 200  # no key was cooled


def test_unparsable_request_gets_json_400(gw, mock):
    answer = raw_exchange(gw, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: nope\r\n\r\n")
    assert status_of(answer) == 400
    openai_error(answer.partition(b"\r\n\r\n")[2])
    assert mock.count() == 0


def test_absolute_form_and_connect_are_refused(gw, mock):
    answer = raw_exchange(gw, b"POST http://evil.example/v1/chat/completions HTTP/1.1\r\n"
                              b"Host: evil.example\r\nAuthorization: Bearer " + TOKEN.encode() +
                          b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    assert status_of(answer) == 400
    openai_error(answer.partition(b"\r\n\r\n")[2])
    answer = raw_exchange(gw, b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
    assert status_of(answer) in (400, 405)  # mitmproxy refuses CONNECT in reverse mode
    assert openai_error(answer.partition(b"\r\n\r\n")[2])["code"] == "method_not_allowed"
    assert mock.count() == 0


def test_request_limit_does_not_cut_long_streams(gw, mock):
    """body_size_limit applies to responses mitmproxy reads too; relayed streams are
    chunked and streamed, so a stream far over max_body_mb (1 MB here) arrives whole."""
    mock.set_default(chunks=12000)
    status, headers, data = send(gw, "POST", "/v1/chat/completions", {**ALLOWED, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert len(data) > 1024 * 1024 and data.rstrip().endswith(b"data: [DONE]")
