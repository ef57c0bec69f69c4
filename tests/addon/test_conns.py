"""ConnGuard in-process (mitmproxy's taddons/tflow), and the mitmproxy internals it relies on."""
from __future__ import annotations

import dataclasses
import inspect
import json
import time

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import server
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.test import taddons, tflow

from keypool.mitm import conns, protocol
from keypool.mitm.conns import ConnGuard


@pytest.fixture
def guard():
    g = ConnGuard()
    with taddons.context(g) as tctx:
        tctx.configure(g, keymux_header_timeout=10, keymux_body_timeout=30,
                       keymux_idle_timeout=60, keymux_max_connections=3)
        yield g


def connected(g: ConnGuard):
    client = tflow.tclient_conn()
    g.client_connected(client)
    return client


def request_on(g: ConnGuard, client, *, body_done: bool, length: int = 0):
    f = tflow.tflow(client_conn=client)
    f.request.headers["content-length"] = str(length)
    f.request.timestamp_end = time.time() if body_done else None
    g.requestheaders(f)
    return f


def answered(f, streaming: bool = False):
    f.response = tflow.tresp()
    f.response.timestamp_end = None if streaming else time.time()


def test_headers_not_in_time_close_the_connection(guard):
    c = connected(guard)
    now = time.monotonic()
    guard.sweep(now + 9)
    assert c.id in guard.conns
    guard.sweep(now + 11)
    assert c.id not in guard.conns


def test_a_body_gets_its_timeout_plus_its_length_at_the_minimum_rate(guard):
    c = connected(guard)
    request_on(guard, c, body_done=False, length=conns.MIN_BODY_RATE * 10)
    now = time.monotonic()
    guard.sweep(now + 35)  # 30 s + 10 s for its length
    assert c.id in guard.conns
    guard.sweep(now + 41)
    assert c.id not in guard.conns


def test_a_request_being_served_or_streamed_is_never_timed_out(guard):
    c = connected(guard)
    f = request_on(guard, c, body_done=True)
    now = time.monotonic()
    guard.sweep(now + 3600)           # waiting for the upstream
    answered(f, streaming=True)
    guard.sweep(now + 7200)           # a long stream
    assert c.id in guard.conns


def test_after_its_answer_a_connection_may_idle_then_is_closed(guard):
    c = connected(guard)
    f = request_on(guard, c, body_done=True)
    answered(f)
    now = time.monotonic()
    guard.sweep(now)                  # notices the answer: the idle wait starts
    guard.sweep(now + 59)
    assert c.id in guard.conns
    guard.sweep(now + 61)
    assert c.id not in guard.conns


def test_past_the_bound_the_longest_idle_connection_makes_room(guard):
    first, second, busy = connected(guard), connected(guard), connected(guard)
    for c in (first, second):
        answered(request_on(guard, c, body_done=True))
    request_on(guard, busy, body_done=True)
    newcomer = connected(guard)
    assert newcomer.error is None and first.id not in guard.conns
    assert {second.id, busy.id, newcomer.id} == set(guard.conns)


def test_past_the_bound_with_nothing_idle_a_new_connection_is_refused(guard):
    for _ in range(3):
        connected(guard)
    refused = connected(guard)
    assert refused.error and refused.id not in guard.conns
    guard.client_disconnected(refused)
    assert len(guard.conns) == 3


def test_an_http10_client_gets_no_chunked_framing(guard):
    f = tflow.tflow(resp=True)
    f.request.http_version = "HTTP/1.0"
    f.response.headers["transfer-encoding"] = "chunked"
    guard.responseheaders(f)
    assert "transfer-encoding" not in f.response.headers
    assert f.response.headers["connection"] == "close"


def test_timeouts_must_be_positive():
    g = ConnGuard()
    with taddons.context(g) as tctx:
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(g, keymux_header_timeout=0)


def test_auto_max_connections_leaves_room_for_the_other_descriptors():
    assert 16 <= conns.auto_max_connections() <= conns.DEFAULT_MAX_CONNECTIONS


def test_protocol_errors_are_openai_json():
    raw = protocol.json_error_response(400, "Bad HTTP request line: b'x'")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request") and b"connection: close" in head
    assert json.loads(body)["error"]["code"] == "http_protocol_error"


# -- the mitmproxy 12.2.3 internals conns.py uses: a change in mitmproxy fails here first ------

def test_mitmproxy_builds_its_http1_errors_with_make_error_response():
    assert list(inspect.signature(_http1.make_error_response).parameters) == [
        "status_code", "message"]
    src = inspect.getsource(_http1.Http1Server)
    assert "make_error_response(400" in src and "make_error_response(status" in src


def test_mitmproxy_http1_server_reads_heads_as_the_bound_expects():
    # protocol._read_headers_bounded wraps read_headers; it relies on these names
    src = inspect.getsource(protocol._original_read_headers)
    assert "self.buf.maybe_extract_lines()" in src and "self.state = self.read_body" in src
    assert "self.state = self.read_headers" in inspect.getsource(_http1.Http1Connection)
    assert hasattr(_http1.Http1Connection, "done")


def test_mitmproxy_connection_table_and_close_mechanism():
    assert isinstance(Proxyserver().connections, dict)
    assert {"transports", "client"} <= set(server.ConnectionHandler.__annotations__)
    assert [f.name for f in dataclasses.fields(server.ConnectionIO)] == [
        "handler", "reader", "writer"]
    # conns._close does what mitmproxy's own inactivity timeout does
    assert "handler.cancel(" in inspect.getsource(server.ConnectionHandler.on_timeout)
    # a client refused in client_connected has its writer closed (flushing our 503)
    assert "if self.client.error:" in inspect.getsource(server.ConnectionHandler.handle_client)


def test_an_upgraded_websocket_is_busy_not_idle(guard):
    c = connected(guard)
    f = tflow.twebsocketflow()  # its response (101) is complete: only the WebSocket is live
    f.client_conn = c
    f.websocket.timestamp_end = None
    guard.requestheaders(f)
    now = time.monotonic()
    guard.sweep(now + 3600)
    assert c.id in guard.conns


def test_protocol_install_is_idempotent_and_reimport_safe():
    import importlib
    protocol.install()
    original = protocol._original_read_headers
    importlib.reload(protocol).install()
    assert protocol._original_read_headers is original
    assert "maybe_extract_lines" in inspect.getsource(original)
