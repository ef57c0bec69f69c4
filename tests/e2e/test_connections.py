"""Client connections against a real mitmdump: slowloris timeouts, the connection bound,
protocol errors as JSON, HTTP/1.0 streams. Raw sockets, since clients here misbehave."""
from __future__ import annotations

import json
import socket
import time

import pytest

from .conftest import K2, pool_yaml
from .harness import GatewayProcess

CHAT = "/v1/chat/completions"


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything until the gateway closes the connection (the socket timeout bounds it)."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def read_response(s: socket.socket) -> bytes:
    """One response with a content-length, leaving the connection open."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += s.recv(65536)
    headers, _, body = raw.partition(b"\r\n\r\n")
    length = int(headers.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += s.recv(65536)
    return headers + b"\r\n\r\n" + body


def head(path: str, length: int | None = None, version: str = "HTTP/1.1",
         extra: str = "") -> bytes:
    lines = [f"POST {path} {version}", "Host: 127.0.0.1", "content-type: application/json"]
    if length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def error_of(raw: bytes) -> tuple[int, dict]:
    status_line, _, rest = raw.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body)["error"]


def chat_body(stream: bool = False, content: str = "hi") -> bytes:
    return json.dumps({"model": "gpt-4o", "stream": stream,
                       "messages": [{"role": "user", "content": content}]}).encode()


@pytest.fixture(scope="module")
def gw(mock, tmp_path_factory, confdir):
    """Short timeouts, so misbehaving clients are cut within the test's patience."""
    work = tmp_path_factory.mktemp("gw-conns")
    args = ("--set", "keymux_header_timeout=1", "--set", "keymux_body_timeout=1",
            "--set", "keymux_idle_timeout=2")
    with GatewayProcess(work, pool_yaml(mock.base_url), env={"MOCK_KEY_2": K2},
                        confdir=confdir, args=args) as g:
        yield g


def test_slowloris_headers_are_cut(gw):
    s = connect(gw.port)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    start = time.monotonic()
    closed = False
    while not closed and time.monotonic() - start < 8:  # trickle header lines, like slowloris
        try:
            s.sendall(b"x-slow: 1\r\n")
            s.settimeout(0.3)
            closed = s.recv(65536) == b"" or True  # any answer or EOF: the gateway gave up
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            closed = True
    s.close()
    # The 408 it sent may be lost to a reset: the client kept sending into a closed socket.
    assert closed and time.monotonic() - start < 4, "the header timeout (1 s) did not end it"


def test_stalled_headers_get_a_408(gw):
    s = connect(gw.port)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    start = time.monotonic()
    answer = read_all(s)
    s.close()
    assert time.monotonic() - start < 4
    status, err = error_of(answer)
    assert status == 408 and err["code"] == "request_timeout"


def test_an_unfinished_body_is_cut_with_a_408(gw):
    s = connect(gw.port)
    s.sendall(head(CHAT, 1000) + b'{"model": "gpt-4o", ')
    start = time.monotonic()
    answer = read_all(s)
    s.close()
    # allowed: body_timeout (1 s) + 1000 bytes at 64 KiB/s, then a sweep (<= 0.25 s)
    assert time.monotonic() - start < 4
    status, err = error_of(answer)
    assert status == 408 and "body" in err["message"]


def test_a_slow_but_steady_upload_within_its_allowance_is_served(gw, mock):
    body = chat_body(content="a" * 200_000)  # allowance: 1 s + 200 kB / 64 KiB/s ~ 4 s
    s = connect(gw.port)
    s.sendall(head(CHAT, len(body), extra="connection: close\r\n"))
    piece = len(body) // 8
    for i in range(0, len(body), piece):  # ~1.6 s in all: longer than body_timeout alone
        s.sendall(body[i:i + piece])
        time.sleep(0.2)
    answer = read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def test_a_long_stream_is_not_cut_by_the_timeouts(gw, mock):
    mock.set_default(chunk_delay_ms=500, chunks=6)  # ~2.5 s: longer than every timeout
    body = chat_body(stream=True)
    s = connect(gw.port, timeout=20)
    s.sendall(head(CHAT, len(body)) + body)
    answer = b""
    while not answer.endswith(b"0\r\n\r\n"):
        chunk = s.recv(65536)
        assert chunk, f"stream cut short: {answer[-300:]!r}"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in answer
    # The same connection then serves another request: it was idle for a moment only.
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    s.close()


def test_an_idle_keep_alive_connection_is_closed_silently(gw):
    s = connect(gw.port)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert read_response(s).startswith(b"HTTP/1.1 200")
    start = time.monotonic()
    assert read_all(s) == b""  # idle_timeout 2 s: closed without a word
    assert 1.5 < time.monotonic() - start < 6
    s.close()


def test_bad_chunked_framing_gets_a_json_400(gw, mock):
    s = connect(gw.port)
    s.sendall(head(CHAT, extra="transfer-encoding: chunked\r\n") + b"zz\r\nabc\r\n0\r\n\r\n")
    status, err = error_of(read_all(s))
    s.close()
    assert status == 400 and err["code"] == "http_protocol_error"
    assert mock.count() == 0


def test_a_malformed_request_line_gets_a_json_400(gw):
    s = connect(gw.port)
    s.sendall(b"GARBAGE\r\n\r\n")
    raw = read_all(s)
    s.close()
    status, err = error_of(raw)
    assert status == 400 and b"content-type: application/json" in raw.lower()
    assert b"<html>" not in raw


def test_an_endless_request_head_is_cut_at_the_cap_with_a_431(gw, mock):
    s = connect(gw.port)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    line = b"x-pad: " + b"a" * 1000 + b"\r\n"
    sent = 0
    try:
        while sent < 2 * 1024 * 1024:  # well past the cap; the gateway stops reading first
            s.sendall(line * 64)
            sent += len(line) * 64
    except (BrokenPipeError, ConnectionResetError):
        pass
    raw = read_all(s)
    s.close()
    if raw:  # a reset may swallow it: the client was still sending
        status, err = error_of(raw)
        assert status == 431 and err["code"] == "request_head_too_large"
    assert sent < 2 * 1024 * 1024 or raw, "neither cut nor answered"
    assert health_ok(gw.port)


def test_a_large_but_complete_head_is_not_the_caps_business(gw):
    s = connect(gw.port)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nconnection: close\r\n"
              + b"x-pad: " + b"a" * 100_000 + b"\r\n\r\n")
    assert read_all(s).startswith(b"HTTP/1.1 200")
    s.close()


def test_http2_prior_knowledge_is_closed(gw, mock):
    """Documented: mitmproxy cannot speak h2c; an HTTP/2 client could not read an HTTP/1
    answer either, so the connection is just closed."""
    s = connect(gw.port)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    assert read_all(s) == b""
    s.close()
    assert mock.count() == 0


def test_an_http10_client_gets_a_close_delimited_stream(gw, mock):
    body = chat_body(stream=True)
    s = connect(gw.port)
    s.sendall(head(CHAT, len(body), version="HTTP/1.0") + body)
    raw = read_all(s)
    s.close()
    headers, _, payload = raw.partition(b"\r\n\r\n")
    assert headers.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in headers.lower()
    assert payload.startswith(b"data: ") and payload.rstrip().endswith(b"data: [DONE]")


# -- the connection bound -----------------------------------------------------------------

@pytest.fixture(scope="module")
def small_gw(mock, tmp_path_factory, confdir):
    work = tmp_path_factory.mktemp("gw-bound")
    args = ("--set", "keymux_max_connections=4", "--set", "keymux_header_timeout=30",
            "--set", "keymux_idle_timeout=30")
    with GatewayProcess(work, pool_yaml(mock.base_url), env={"MOCK_KEY_2": K2},
                        confdir=confdir, args=args) as g:
        yield g


def health_ok(port: int) -> bool:
    try:
        s = connect(port, timeout=2)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        ok = read_all(s).startswith(b"HTTP/1.1 200")
        s.close()
        return ok
    except OSError:
        return False


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_past_the_bound_a_new_connection_gets_a_503(small_gw):
    hoarders = [connect(small_gw.port) for _ in range(4)]  # silent: never send a byte
    try:
        # the gateway learns of them asynchronously: wait until the bound bites
        def refused() -> bool:
            s = connect(small_gw.port, timeout=3)
            raw = read_all(s)
            s.close()
            return raw.startswith(b"HTTP/1.1 503")
        assert wait_for(refused)
        s = connect(small_gw.port)
        status, err = error_of(read_all(s))
        s.close()
        assert status == 503 and err["code"] == "too_many_connections"
    finally:
        for h in hoarders:
            h.close()
    assert wait_for(lambda: health_ok(small_gw.port))  # served again once they are gone


def test_idle_keep_alive_connections_make_room_first(small_gw):
    assert wait_for(lambda: health_ok(small_gw.port))  # the previous test's hoarders left
    idle = []
    for _ in range(4):
        s = connect(small_gw.port)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 200")
        idle.append(s)
    try:
        assert health_ok(small_gw.port)  # a fifth is served: the longest-idle one made room
        idle[0].settimeout(5)
        assert read_all(idle[0]) == b""
    finally:
        for s in idle:
            s.close()
