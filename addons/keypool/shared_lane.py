"""The connection the hot path's reserve calls share (keypool.shared_lua): one EVALSHA per
call, pipelined on a bare asyncio Protocol, answers handed back in order.

Why not redis-py's connection: its StreamReader, reader task and parser cost about twice the
client CPU of a call (25 against 48 us in scripts/bench_shared.py). Here the command is one
bytes join, written with ``transport.write`` (a wait only past the transport's high-water
mark), and the reply is parsed in ``data_received`` and handed straight to the oldest
waiting future: one task switch a call.

What to connect to is redis-py's reading of ``state.url`` (host, port, TLS context, unix
socket path, username, password, db, client name): the pool's connection class is built,
never connected, and read. Every url form keypool.config accepts (redis://, rediss://,
unix://, with or without a user, password and db) is spoken here; what is not (a credential
provider, another connection class: not reachable from a url) gets redis-py's own lane
(keypool.shared_lane_pooled) from ``make_lane``.
"""
from __future__ import annotations

import asyncio
import socket
from collections import deque

from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import (AuthenticationError, ConnectionError, DataError, InvalidResponse,
                              NoScriptError, ResponseError)

from .shared_lane_pooled import PooledLane

# Past this many bytes not yet sent, a call waits for the socket (asyncio's own default).
HIGH_WATER = 64 * 1024


def make_lane(pool, script: str):
    """The Protocol lane for what redis-py made of the url, or redis-py's own lane for what
    it does not speak."""
    conn = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
    # the lane always speaks RESP2 (redis-py 8 asks for RESP3 by default, ``?protocol=``
    # only changes redis-py's replies: the reserve call's answer is the same array)
    if (type(conn) not in (Connection, SSLConnection, UnixDomainSocketConnection)
            or conn.credential_provider is not None):
        return PooledLane(pool, script)
    return Lane(conn, script)


# -- RESP2 ------------------------------------------------------------------------------

def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def _enc(a) -> bytes:
    t = type(a)
    if t is str:
        return a.encode()
    if t is int or t is float:
        return repr(a).encode()
    if t is bytes:
        return a
    raise DataError(f"a shared state call's argument of type {t.__name__}")


_TEXT = {int: repr, float: repr}  # as redis-py encodes them


def _pack_args(args) -> bytes:
    """The bulk strings of a call's arguments: built as one str and encoded once when all
    are str or numbers and ASCII (the reserve call's are: 40% less than bulk by bulk)."""
    try:
        s = "".join([f"${len(p)}\r\n{p}\r\n"
                     for p in [a if type(a) is str else _TEXT[type(a)](a) for a in args]])
        if s.isascii():
            return s.encode()
    except KeyError:  # bytes, or what _enc refuses
        pass
    return b"".join([_bulk(_enc(a)) for a in args])


def pack(*parts) -> bytes:
    """One command as RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join([_bulk(_enc(p)) for p in parts])


def _error(msg: str) -> ResponseError:
    return NoScriptError(msg) if msg.startswith("NOSCRIPT") else ResponseError(msg)


def parse(buf: bytes, pos: int = 0):
    """(reply, end) of the reply starting at ``pos``, or (None, -1) if not all of it is in
    ``buf`` yet. Integers as int, bulk and simple strings as bytes, nil as None, arrays as
    lists, errors as ResponseError instances (returned, not raised)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None, -1
    kind = buf[pos]
    if kind == 58:  # ':'
        return int(buf[pos + 1:end]), end + 2
    if kind == 36:  # '$'
        size = int(buf[pos + 1:end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if len(buf) < stop + 2:
            return None, -1
        return buf[end + 2:stop], stop + 2
    if kind == 42:  # '*'
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        out, pos = [], end + 2
        for _ in range(n):
            item, pos = parse(buf, pos)
            if pos < 0:
                return None, -1
            out.append(item)
        return out, pos
    if kind == 43:  # '+'
        return buf[pos + 1:end], end + 2
    if kind == 45:  # '-'
        return _error(buf[pos + 1:end].decode(errors="replace")), end + 2
    raise InvalidResponse(f"shared state: unexpected reply type {chr(kind)!r}")


# -- the connection ---------------------------------------------------------------------

class _Wire(asyncio.Protocol):
    """One connection: futures waiting in the order their commands were written."""

    def __init__(self, lost) -> None:
        self.transport = None
        self.waiting: deque[asyncio.Future] = deque()
        self.buf = b""
        self.paused: asyncio.Future | None = None  # set while the transport is full
        self.error: BaseException | None = None
        self._lost = lost

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER)

    def send(self, packed: bytes) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)  # before the write, with no await between: order kept
        self.transport.write(packed)
        return fut

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, size = 0, len(buf)
        try:
            while pos < size:
                answer, end = parse(buf, pos)
                if end < 0:
                    break
                pos = end
                fut = self.waiting.popleft()  # IndexError: an answer nobody asked for
                if not fut.done():  # (a call given up on: its answer is dropped here)
                    if isinstance(answer, ResponseError):
                        fut.set_exception(answer)
                    else:
                        fut.set_result(answer)
        except (InvalidResponse, ValueError, IndexError) as e:
            self.buf = b""
            self.fail(InvalidResponse(f"shared state: garbled reply ({e})"))
            return
        self.buf = buf[pos:] if pos < size else b""

    def pause_writing(self) -> None:
        self.paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        paused, self.paused = self.paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    async def drain(self) -> None:
        if self.paused is not None:
            await asyncio.shield(self.paused)

    def connection_lost(self, exc) -> None:
        self.fail(exc or ConnectionError("Redis closed the connection"))

    def fail(self, e: BaseException) -> None:
        """Every waiting call fails now with ConnectionError; the lane reopens on its next
        call."""
        if self.error is None:
            self.error = e if isinstance(e, ConnectionError) else ConnectionError(
                f"shared state lane closed: {e}")
        self._lost(self)
        if self.transport is not None:
            self.transport.close()
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(self.error)
        self.resume_writing()


def _keepalive(conn, transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or not getattr(conn, "socket_keepalive", False):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for k, v in conn.socket_keepalive_options.items():
            sock.setsockopt(socket.SOL_TCP, k, v)
    except (OSError, TypeError):
        pass  # an option this platform lacks: keepalive is a nicety here


class Lane:
    """One connection that pipelines the reserve calls: ``await call(*args)`` is EVALSHA of
    the script with these arguments. Opened on the first call (AUTH, SELECT, SCRIPT LOAD);
    a lost connection fails every waiting call at once with redis ConnectionError and the
    next call opens a new one; NOSCRIPT (Redis restarted) loads the script again and retries
    once."""

    def __init__(self, conn, script: str):
        self.conn = conn  # a redis-py connection, never connected: what to connect to
        self.script = script
        self.sha = b""
        self._head = b""  # the constant start of every call: *N and EVALSHA sha
        self._wire: _Wire | None = None
        self._opening: asyncio.Task | None = None

    async def call(self, *args):
        wire = self._wire or await self._open()
        fut = wire.send(b"*%d\r\n$7\r\nEVALSHA\r\n%s" % (len(args) + 2, self._head)
                        + _pack_args(args))
        if wire.paused is not None:
            await wire.drain()
        try:
            return await fut
        except NoScriptError:
            return await self._reload_and_call(wire, args)

    async def _reload_and_call(self, wire: _Wire, args):
        if wire.error is not None:
            raise wire.error
        # in order on the same connection: the script is there when the call runs
        wire.send(pack("SCRIPT", "LOAD", self.script))
        return await wire.send(pack("EVALSHA", self.sha, *args))

    async def _open(self) -> _Wire:
        # one opening shared by the calls that wait for it; one given up on (its timeout)
        # leaves it to finish for the others
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._connect())
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    def _opened(self, task: asyncio.Task) -> None:
        self._opening = None
        if not task.cancelled():
            task.exception()  # retrieved: each waiting call has raised it already

    async def _connect(self) -> _Wire:
        try:
            return await self._connect_wire()
        except asyncio.CancelledError:  # close() (the calls waiting are not cancelled)
            raise ConnectionError("shared state lane closed") from None

    async def _connect_wire(self) -> _Wire:
        conn, loop = self.conn, asyncio.get_running_loop()
        wire = _Wire(self._lost)
        async with asyncio.timeout(conn.socket_connect_timeout):
            if isinstance(conn, UnixDomainSocketConnection):
                await loop.create_unix_connection(lambda: wire, conn.path)
            else:
                ssl = conn.ssl_context.get() if isinstance(conn, SSLConnection) else None
                await loop.create_connection(lambda: wire, conn.host, conn.port, ssl=ssl)
                _keepalive(conn, wire.transport)
            try:
                sha = await self._handshake(wire)
            except BaseException as e:
                wire.fail(e)
                raise
        self.sha = sha
        self._head = _bulk(sha)
        self._wire = wire
        return wire

    async def _handshake(self, wire: _Wire) -> bytes:
        """AUTH, SELECT, CLIENT SETNAME and SCRIPT LOAD in one write; the sha."""
        conn, sent = self.conn, []
        if conn.username or conn.password:
            auth = [conn.username] if conn.username else []
            sent.append(wire.send(pack("AUTH", *auth, conn.password or "")))
        if conn.db:
            sent.append(wire.send(pack("SELECT", conn.db)))
        if conn.client_name:
            sent.append(wire.send(pack("CLIENT", "SETNAME", conn.client_name)))
        sent.append(wire.send(pack("SCRIPT", "LOAD", self.script)))
        got = await asyncio.gather(*sent, return_exceptions=True)
        for i, answer in enumerate(got):
            if isinstance(answer, BaseException):
                if i == 0 and (conn.username or conn.password):
                    raise AuthenticationError(f"shared state: AUTH refused ({answer})")
                raise answer
        return got[-1]

    def _lost(self, wire: _Wire) -> None:
        if self._wire is wire:
            self._wire = None

    async def close(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
        if self._wire is not None:
            self._wire.fail(ConnectionError("closed"))
