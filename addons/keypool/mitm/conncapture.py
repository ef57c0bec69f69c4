"""Fills a ``ConnInfo`` for each upstream attempt: its timings, and the connection's facts
(addresses, TLS, certificates) read once per connection.

Not through aiohttp's ``TraceConfig``: with one installed, aiohttp builds a trace context
and a parameters object for every signal of every request, about 20 µs per attempt
measured here, handlers or not. Instead the attempt's ``ConnInfo`` rides in a context
variable (``attempt``, set by the sender around its request), and two subclasses stamp it:
the connector when it has opened a new connection (TCP, proxy CONNECT and TLS in one step),
the request when its head and body were written. A ``ConnInfo`` without a setup stamp
used a pooled connection. The facts of a connection do not change while it is pooled, so
they are kept in a ``WeakKeyDictionary`` on the transport: a reused connection costs one
lookup.
"""
from __future__ import annotations

import ssl
import time
from contextvars import ContextVar
from weakref import WeakKeyDictionary

import aiohttp

from .conninfo import ConnInfo

_now = time.time
attempt: ContextVar[ConnInfo | None] = ContextVar("keymux_attempt", default=None)


class Connector(aiohttp.TCPConnector):
    async def _create_connection(self, req, traces, timeout):
        proto = await super()._create_connection(req, traces, timeout)
        info = attempt.get()
        if info is not None:  # moved to timestamp_tls_setup by capture() if TLS was set up
            info.timestamp_tcp_setup = _now()
        return proto


class Request(aiohttp.ClientRequest):
    async def send(self, conn):
        resp = await super().send(conn)
        info = attempt.get()
        if info is not None:
            writer = self._writer  # the body's writer if it is still being written
            if writer is None:
                info.timestamp_request_sent = _now()
            else:
                writer.add_done_callback(lambda _: _sent(info))
        return resp


def _sent(info: ConnInfo) -> None:
    if info.timestamp_request_sent is None:  # else the answer came first (capture)
        info.timestamp_request_sent = _now()


# transport -> (peername, sockname, sni, tls_version, cipher, alpn, certificates)
_facts: WeakKeyDictionary = WeakKeyDictionary()


def capture(info: ConnInfo, resp: aiohttp.ClientResponse) -> None:
    """Right after the response head arrived: the connection may be released (and its
    ``resp.connection`` gone) as soon as the body is read, so read it now."""
    info.timestamp_response_start = _now()
    if info.timestamp_request_sent is None:
        # The body's writer has not reported back yet (its last drain resumes later), or
        # the server answered before the body was all sent: sent no later than answered.
        info.timestamp_request_sent = info.timestamp_response_start
    info.reused = info.timestamp_tcp_setup is None
    protocol = getattr(resp, "_protocol", None)  # kept by aiohttp after the release
    transport = getattr(protocol, "transport", None)
    if transport is None:
        return
    facts = _facts.get(transport)
    if facts is None:
        facts = _read_facts(transport)
        try:
            _facts[transport] = facts
        except TypeError:  # a transport without weak references: read it every time
            pass
    (info.peername, info.sockname, info.sni, info.tls_version, info.cipher, info.alpn,
     info.certificates) = facts
    if info.tls_version is not None and info.timestamp_tcp_setup is not None:
        # aiohttp opens TCP and TLS (and a proxy's CONNECT) in one step: its end is when
        # TLS was set up; the TCP handshake's own end is not known (left None).
        info.timestamp_tls_setup, info.timestamp_tcp_setup = info.timestamp_tcp_setup, None


def _read_facts(transport) -> tuple:
    peer, sock = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    peer = tuple(peer[:2]) if peer else None
    sock = tuple(sock[:2]) if sock else None
    tls: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if tls is None:
        return peer, sock, None, None, None, None, []
    cipher = tls.cipher()
    return (peer, sock, tls.server_hostname, tls.version(), cipher[0] if cipher else None,
            tls.selected_alpn_protocol(), _chain(tls))


def _chain(tls: ssl.SSLObject) -> list[bytes]:
    """The server's certificates as DER, leaf first (the whole chain where Python can)."""
    inner = getattr(tls, "_sslobj", None)
    get_chain = getattr(tls, "get_unverified_chain", None) or getattr(inner, "get_unverified_chain", None)
    if get_chain is not None:
        try:
            chain = get_chain()
            if chain:
                return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]
        except (AttributeError, ValueError, ssl.SSLError):
            pass
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []
