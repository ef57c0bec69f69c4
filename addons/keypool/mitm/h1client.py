"""keymux's lean HTTP/1.1 client, for upstream attempts that go straight to the provider.

aiohttp's request machinery (ClientRequest, CIMultiDict, the connector, a StreamReader and
a task wake-up per body read) was ~15% of keymux's CPU for small requests and one task
switch per streamed chunk (docs/benchmarks.md). This client writes the request in one
``transport.write`` and parses the answer in the connection's ``data_received``
(``h1reply``): a small answer costs one wake-up (its head, usually with its body), and a
stream's pieces go to the relay's writer from ``data_received`` itself (``H1Reply.pump``).

Connections are kept alive in a pool per (host, port, TLS context, local address). TLS
uses the SSLContext ``sendopts`` builds (trust, client certificates, versions, ciphers),
with the provider's host as SNI and for verification, as aiohttp does. Attempts through a
proxy keep going through aiohttp (``upstream.py``); ``--set keymux_sender=aiohttp`` sends
every attempt with aiohttp.

A pooled connection the provider closed meanwhile must not count against a key: if a reused
connection ends with a clean close (FIN) before the answer's first byte, the request is
sent once more on a new one (a keep-alive connection the provider closed as it was being
reused). A reset, or a silence, is the provider's answer and is judged as with aiohttp.
"""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time

from ..reissue import UpstreamError
from . import conncapture
from .conninfo import ConnInfo
from .h1reply import H1Reply

logger = logging.getLogger("keymux")
CONNECT_S = 15.0   # as aiohttp's sock_connect
KEEP_S = 15.0      # an idle pooled connection is closed after this (aiohttp's keepalive)
MAX_IDLE = 64      # idle connections kept per pool key
_now = time.time
_NO_LENGTH = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})


class H1Conn(asyncio.Protocol):
    """One connection to a provider; its current answer (``reply``) parses what arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reply: H1Reply | None = None
        self.lost = False
        self.paused = False
        self.facts: tuple | None = None  # conncapture's facts, read once per connection
        self.key: tuple | None = None
        self.expiry: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reply = self.reply
        if reply is None:  # bytes while idle: nothing to trust on this connection again
            self.lost = True
            self.transport.abort()
            return
        reply.feed(data)

    def eof_received(self):
        self.lost = True
        if self.reply is not None:
            self.reply.eof(clean=True)
        return False  # close

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.reply is not None:
            self.reply.eof(exc)

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if not self.lost:
                self.transport.resume_reading()

    def abort(self) -> None:
        self.lost = True
        self.transport.abort()


class Pool:
    """Idle keep-alive connections per (host, port, TLS context, local address)."""

    def __init__(self) -> None:
        self.idle: dict[tuple, list[H1Conn]] = {}
        self.closed = False

    def get(self, key: tuple) -> H1Conn | None:
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            conn.expiry.cancel()
            if not conn.lost and not conn.transport.is_closing():
                return conn
            conn.transport.abort()
        return None

    def put(self, conn: H1Conn, keep: bool) -> None:
        conn.reply = None
        conns = self.idle.setdefault(conn.key, []) if keep and not self.closed else None
        if conns is None or conn.lost or len(conns) >= MAX_IDLE:
            conn.abort()
            return
        conn.resume()  # so a close by the provider while idle is seen
        conns.append(conn)
        conn.expiry = conn.loop.call_later(KEEP_S, self._expire, conn)

    def _expire(self, conn: H1Conn) -> None:
        conns = self.idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
        conn.transport.close()

    def close(self) -> None:
        """No more connections kept; idle ones closed, busy ones when their answer ends."""
        self.closed = True
        for conns in self.idle.values():
            for conn in conns:
                conn.expiry.cancel()
                conn.transport.close()
        self.idle.clear()


def request_head(method: str, url: str, host: str, port: int, default_port: int,
                 fields, hop: frozenset, body: bytes) -> bytes:
    """The request's head: the URL's target as it is (byte for byte), the provider's Host,
    the client's fields but hop-by-hop and framing ones, and the body's length."""
    start = url.find("/", url.find("//") + 2)
    target = url[start:] if start >= 0 else "/"
    netloc = f"[{host}]" if ":" in host else host
    if port != default_port:
        netloc = f"{netloc}:{port}"
    out = [b"%s %s HTTP/1.1\r\nHost: %s" % (method.encode(), target.encode("latin-1"),
                                            netloc.encode("idna"))]
    out += [k + b": " + v for k, v in fields if k.lower() not in hop]
    if body or method not in _NO_LENGTH:
        out.append(b"Content-Length: %d" % len(body))
    out.append(b"\r\n")
    return b"\r\n".join(out)


async def send(pool: Pool, host: str, port: int, tls: ssl.SSLContext | None,
               local: tuple | None, head: bytes, body: bytes, info: ConnInfo, *,
               head_only: bool, cap: int, error_cap: int, stream_cap: int | None,
               hop: frozenset) -> H1Reply:
    """Send one request and wait for its answer's head; UpstreamError if none came."""
    key = (host, port, tls, local)
    data = head + body if len(body) < 65536 else None
    for tried in (False, True):
        conn = None if tried else pool.get(key)
        fresh = conn is None
        if fresh:
            conn = await _connect(host, port, tls, local, info)
            conn.key = key
        info.reused = not fresh
        _facts(conn, info)
        reply = H1Reply(conn, info, head_only, cap, error_cap, stream_cap, hop,
                        lambda keep, c=conn: pool.put(c, keep))
        conn.reply = reply
        try:
            transport = conn.transport
            if data is not None:
                transport.write(data)
            else:
                transport.writelines((head, body))  # a large body: no copy into one buffer
            if not transport.get_write_buffer_size():
                info.timestamp_request_sent = _now()
            await reply.head()
        except UpstreamError:
            if not fresh and reply.closed_clean:
                continue  # the pooled connection was dead: once more on a new one
            raise
        except BaseException:
            reply.close()
            raise
        if info.timestamp_request_sent is None:  # sent no later than answered
            info.timestamp_request_sent = info.timestamp_response_start
        return reply
    raise AssertionError("unreachable")


async def _connect(host: str, port: int, tls: ssl.SSLContext | None, local: tuple | None,
                   info: ConnInfo) -> H1Conn:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(CONNECT_S):
            _, conn = await loop.create_connection(
                lambda: H1Conn(loop), host, port, ssl=tls,
                server_hostname=host if tls is not None else None, local_addr=local)
    except (OSError, TimeoutError) as e:
        raise UpstreamError(failed(host, e)) from None
    if tls is not None:  # TCP and TLS in one step, as with aiohttp: the end is TLS's
        info.timestamp_tls_setup = _now()
    else:
        info.timestamp_tcp_setup = _now()
    return conn


def _facts(conn: H1Conn, info: ConnInfo) -> None:
    if conn.facts is None:
        conn.facts = conncapture._read_facts(conn.transport)
    (info.peername, info.sockname, info.sni, info.tls_version, info.cipher, info.alpn,
     info.certificates) = conn.facts


_logged: set[tuple[str, str]] = set()  # (host, why): each told once, not once per attempt


def failed(host: str, e: BaseException) -> str:
    """Why a connection could not be opened, in words without address or URL; a TLS
    failure is also logged (once per host and reason): a setup problem, not a flaky key."""
    if isinstance(e, ssl.SSLCertVerificationError):
        why = f"TLS certificate verification failed: {e.verify_message or type(e).__name__}"
    elif isinstance(e, ssl.SSLError):
        why = f"TLS failed: {e.reason or type(e).__name__}"
    elif isinstance(e, TimeoutError):
        return "cannot connect: timed out"
    else:
        return f"cannot connect: {os.strerror(e.errno) if e.errno else type(e).__name__}"
    if (host, why) not in _logged and len(_logged) < 256:
        _logged.add((host, why))
        hint = ""
        if isinstance(e, ssl.SSLCertVerificationError):
            hint = (" (a private CA: --set ssl_verify_upstream_trusted_ca=FILE; a test server:"
                    " --set ssl_insecure=true)")
        logger.warning("keymux: upstream %s: %s%s", host, why, hint)
    return why
