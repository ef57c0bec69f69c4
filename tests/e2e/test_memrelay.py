"""A stream through the real mitmdump reaches mitmproxy in memory (memrelay): no loopback
socket pair to the relay while it flows, and it streams as before."""
import http.client
import json
import os
import time
from pathlib import Path


def sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    n = 0
    for fd in fds.iterdir():
        try:
            n += os.readlink(fd).startswith("socket:")
        except OSError:
            pass  # closed while listed
    return n


def settled(pid: int) -> int:
    """The socket count once the last connection's close has gone through (stable 0.3 s)."""
    deadline, last, since = time.monotonic() + 5, sockets(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = sockets(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 0.3:
            break
    return last


def start_stream(gw, delay_ms: int):
    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    conn.request("POST", "/v1/chat/completions", body,
                 {"content-type": "application/json", "authorization": "Bearer sk-x",
                  "x-mock-chunk-delay-ms": str(delay_ms)})
    return conn, conn.getresponse()


def test_a_flowing_stream_opens_no_socket_to_the_relay(gateway, mock):
    conn, resp = start_stream(gateway, 0)  # warm: the relay started, an upstream pooled
    assert resp.status == 200 and b"[DONE]" in resp.read()
    conn.close()
    before = settled(gateway.proc.pid)
    conn, resp = start_stream(gateway, 300)
    try:
        assert resp.status == 200
        assert resp.readline().startswith(b"data: ")  # flowing, through the relay
        during = sockets(gateway.proc.pid)
        # the client's socket, at most one new upstream connection; over the loopback
        # relay there would be two more (mitmproxy's side and the relay's)
        assert during - before <= 2, (before, during)
        rest = resp.read()
        assert b"[DONE]" in rest
    finally:
        conn.close()
