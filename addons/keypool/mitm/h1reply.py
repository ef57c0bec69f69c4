"""One answer read by keymux's lean HTTP/1.1 client (``h1client``): its parser and its body.

The answer is parsed as bytes arrive in the connection's ``data_received`` (no
StreamReader, no task woken per read): the head, then the body framed by Content-Length,
chunked encoding or the connection's end, inflated (gzip, deflate, br) in bounded steps so
a compression bomb stops at its cap. ``H1Reply`` has ``AiohttpReply``'s interface (status,
reason, headers, fields, conn, read(), chunks(), close()) plus ``pump``: the relay's sink
gets each piece synchronously, from ``data_received`` itself.

Limits a hostile upstream meets: a head over ``HEAD_CAP`` bytes or ``MAX_FIELDS`` fields, a
chunk-size line over ``LINE_CAP`` or not hexadecimal, a Content-Length that is not one
non-negative decimal number: each ends the attempt (``UpstreamError``), its connection closed.
"""
from __future__ import annotations

import asyncio
import time

from ..reissue import UpstreamError
from .conninfo import ConnInfo
from .h1parse import HEAD_CAP, LINE_CAP, Head, chunk_size, content_length, decoder, parse_head

PENDING_CAP = 1 << 20  # body bytes held before anyone reads: reading pauses past this
_now = time.time

# framing states
HEAD, LENGTH, CHUNKED, EOF, DONE = range(5)

class H1Reply:
    """One attempt's answer on a ``h1client.H1Conn``; fed by its ``data_received``."""

    def __init__(self, conn, info: ConnInfo, head_only: bool, cap: int, error_cap: int,
                 stream_cap: int | None, hop: frozenset, on_done):
        self._conn, self.conn, self._head_only = conn, info, head_only
        self._cap, self._error_cap, self._hop = cap, error_cap, hop
        self.cap = cap
        self.stream_cap = stream_cap  # the user's body_size_limit: a stream is cut past it
        self.status, self.reason, self.headers, self.fields = 0, "", {}, []
        self.received = False        # any byte came back
        self.closed_clean = False    # closed with a FIN before any byte (a stale pooled one)
        self._state, self._buf, self._tail = HEAD, b"", False
        self._left, self._crlf, self._trailers = 0, False, False
        self._decode = None
        self._declared: int | None = None
        self._keep = False           # the connection may serve another request after this
        self._sink = None            # callable(piece) -> true: wait for the writer to drain
        self._pending: list[bytes] = []
        self._pending_n = 0
        self._got, self._limit, self._over = 0, None, None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._drain = False
        self._idle_s: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._on_done = on_done      # once: (keep) -> the pool takes the connection back

    # -- fed by the connection ---------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received = True
        if self._idle_s is not None:
            self._last = self._conn.loop.time()
        try:
            state = self._state
            if state == CHUNKED:
                self._chunked(data)
            elif state == LENGTH:
                self._length(data)
            elif state == EOF:
                self._emit(data)
            elif state == HEAD:
                self._head(data)
            else:  # bytes after the answer's end: the connection cannot be trusted again
                self._keep = False
        except ValueError as e:
            self.fail(UpstreamError(f"malformed answer from upstream: {e}"))
        except Exception as e:  # over a cap (UpstreamError), or the sink failed
            self.fail(e)

    def eof(self, exc: BaseException | None = None, clean: bool = False) -> None:
        """The upstream closed the connection (``clean``: with a FIN, not a reset)."""
        if self._state == EOF:
            self._finish(False)
        elif self._state == HEAD:
            self.closed_clean = clean and not self.received
            self.fail(UpstreamError("upstream closed the connection"))
        elif self._state != DONE:
            self.fail(UpstreamError("upstream broke off the body"))

    def _head(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0 or end > HEAD_CAP:
                if len(buf) > HEAD_CAP:
                    raise ValueError(f"header over {HEAD_CAP >> 10} KB")
                self._buf = buf
                return
            head = parse_head(buf[:end])
            buf = buf[end + 4:]
            if not 100 <= head.status < 200:
                break
            if head.status == 101:
                raise ValueError("unexpected 101")  # informational (103, 100): skipped
        self._buf, self._tail = b"", bool(buf)
        self._start(head)
        if buf:
            self.feed(buf)

    def _start(self, head: Head) -> None:
        self.status, self.reason = head.status, head.reason
        self.cap = self._cap if head.status < 400 else min(self._cap, self._error_cap)
        headers, fields, hop = {}, [], self._hop
        lengths, te, enc, conn = [], None, None, b""
        for k, v in head.fields:
            low = k.lower()
            headers[low.decode("latin-1")] = v.decode("latin-1")
            if low not in hop:
                fields.append((k, v))
            elif low == b"content-length":
                lengths.append(v)
            elif low == b"transfer-encoding":
                te = v if te is None else te + b"," + v
            elif low == b"content-encoding":
                enc = v
            elif low == b"connection":
                conn += b"," + v.lower()
        self.headers, self.fields = headers, fields
        self._keep = head.version == b"HTTP/1.1" and b"close" not in conn
        self.conn.timestamp_response_start = _now()
        if self._head_only or head.status in (204, 304):
            self._finish(self._keep and not self._tail)  # bytes after a bodiless answer
            return
        if te is not None:
            # chunked last: chunked framing; a length beside it is ignored (and not trusted)
            if te.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
                self._state = CHUNKED
                self._keep = self._keep and not lengths
            else:
                self._state, self._keep = EOF, False
        else:
            self._declared = content_length(lengths)
            if self._declared is None:
                self._state, self._keep = EOF, False
            elif self._declared == 0:
                self._finish(self._keep and not self._tail)
                return
            else:
                self._state, self._left = LENGTH, self._declared
        if enc is not None:
            self._decode = decoder(enc)
        self._wake()

    def _length(self, data: bytes) -> None:
        left = self._left
        if len(data) < left:
            self._left = left - len(data)
            self._emit(data)
            return
        self._left = 0
        self._emit(data if len(data) == left else data[:left])
        self._finish(self._keep and len(data) == left)

    def _chunked(self, data: bytes) -> None:
        """The chunks of one read go on as one piece: one relay write, as aiohttp's
        ``readany`` gave them (none is held back for a later read)."""
        out: list[bytes] = []
        try:
            end = self._frames(data, out)
        finally:
            if out:
                self._emit(out[0] if len(out) == 1 else b"".join(out))
        if end is not None:
            self._finish(end)

    def _frames(self, data: bytes, out: list) -> bool | None:
        """Chunked framing: the data of the chunks in ``data`` into ``out``; at the body's
        end, whether the connection may be kept."""
        buf = self._buf + data if self._buf else data
        pos, n = 0, len(buf)
        while pos < n:
            left = self._left
            if left:
                take = n - pos if n - pos < left else left
                self._left = left - take
                self._crlf = self._left == 0
                out.append(buf[pos:pos + take] if take != n or pos else buf)
                pos += take
                continue
            if self._crlf:
                if n - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise ValueError("no CRLF after a chunk")
                pos, self._crlf = pos + 2, False
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > LINE_CAP:
                    raise ValueError("chunk-size line too long")
                break
            if eol - pos > LINE_CAP:
                raise ValueError("chunk-size line too long")
            line, pos = buf[pos:eol], eol + 2
            if self._trailers:
                if not line:  # the blank line after the trailers: the body's end
                    self._buf = b""
                    return self._keep and pos == n
                continue
            size = chunk_size(line)
            if size:
                self._left = size
            else:
                self._trailers = True
        self._buf = buf[pos:] if pos < n else b""
        return None

    def _emit(self, data: bytes) -> None:
        if self._sink is None:  # nobody reads yet: held as it came (inflated only when read)
            self._pending.append(data)
            self._pending_n += len(data)
            if self._pending_n > PENDING_CAP:
                self._conn.pause()  # let TCP hold the rest
            return
        if self._decode is None:
            self._give(data)
        else:
            for piece in self._decode(data):
                self._give(piece)

    def _give(self, piece: bytes) -> None:
        if self._limit is not None:
            self._got += len(piece)
            if self._got > self._limit:
                self._over(piece)
        if self._sink(piece):
            self._drain = True
            self._conn.pause()
            self._wake()

    def _attach(self, sink) -> None:
        """A reader takes the body: what came so far goes to ``sink`` first."""
        self._sink = sink
        pieces, self._pending, self._pending_n = self._pending, [], 0
        try:
            for data in pieces:
                self._emit(data)
        except ValueError as e:
            self.fail(UpstreamError(f"malformed answer from upstream: {e}"))
        except Exception as e:
            self.fail(e)
        if not self._drain:
            self._conn.resume()

    def _finish(self, keep: bool) -> None:
        self._state = DONE
        self._done(keep)
        self._wake()

    def fail(self, e: BaseException) -> None:
        """The answer ends in ``e``; its connection is closed (unless it was already back
        in the pool, whole: a cap met while reading what had all arrived)."""
        if self._error is None:
            self._error, self._state = e, DONE
            self._done(False)
            self._wake()

    def _done(self, keep: bool) -> None:
        if self.conn.timestamp_end is None:
            self.conn.timestamp_end = _now()
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(keep)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- read by the gateway and the relay ---------------------------------------------

    async def head(self) -> None:
        """Wait for the status line and fields (UpstreamError if none came)."""
        while self._state == HEAD and self._error is None:
            await self._wait()
        if self._error is not None and not self.status:
            raise self._error

    async def read(self) -> bytes:
        """The whole body, inflated, or UpstreamError past ``cap`` bytes."""
        if self._declared is not None and self._declared > self.cap:
            raise self._too_big()
        body = bytearray()
        self._got, self._limit, self._over = 0, self.cap, self._over_cap
        self._attach(body.extend)  # extend returns None: never waits
        try:
            while self._state != DONE:
                await self._wait()
        finally:
            self._sink = None
        if self._error is not None:
            raise self._error
        return bytes(body)

    def _too_big(self) -> UpstreamError:
        self.close()  # drop the connection rather than drain the rest
        return UpstreamError(f"answer over {self.cap / (1 << 20):g} MB")

    def _over_cap(self, piece: bytes) -> None:
        raise UpstreamError(f"answer over {self.cap / (1 << 20):g} MB")

    def _over_stream(self, piece: bytes) -> None:
        keep = len(piece) - (self._got - self._limit)
        if keep > 0:  # up to the limit, then cut off
            self._sink(piece[:keep])
        raise UpstreamError(f"stream over body_size_limit ({self.stream_cap} bytes)")

    async def pump(self, sink, drain, idle_s: float | None = None) -> None:
        """Hand each piece of the body to ``sink`` as it arrives, from the connection's
        ``data_received``: no task is woken per piece. ``sink(piece)`` returns true when its
        writer holds data (or is closing): reading pauses until ``await drain()``. A stream
        silent for ``idle_s`` (while not paused for the writer) ends in TimeoutError, one
        past ``stream_cap`` bytes in UpstreamError."""
        loop = self._conn.loop
        if idle_s is not None:
            self._idle_s, self._last = idle_s, loop.time()
            self._timer = loop.call_at(self._last + idle_s, self._idle)
        if self.stream_cap is not None:
            self._got, self._limit, self._over = 0, self.stream_cap, self._over_stream
        try:
            self._attach(sink)
            while True:
                if self._error is not None:
                    raise self._error
                if self._drain:
                    self._drain = False
                    await drain()
                    self._conn.resume()
                    continue
                if self._state == DONE:
                    return
                await self._wait()
        except UpstreamError:
            self.close()
            raise
        finally:
            self._sink = None
            if self._timer is not None:
                self._timer.cancel()

    def _idle(self) -> None:
        if self._state == DONE:
            return
        loop = self._conn.loop
        now = loop.time()
        if self._drain or self._conn.paused:  # the client is slow, not the upstream silent
            self._last = now
        elif now >= self._last + self._idle_s:
            self.fail(TimeoutError())  # and the connection is closed
            return
        self._timer = loop.call_at(self._last + self._idle_s, self._idle)

    async def chunks(self, idle_s: float | None = None):
        """The body as it arrives; a stream silent for ``idle_s`` is cut off (TimeoutError),
        one past ``stream_cap`` bytes too (UpstreamError)."""
        left, out = self.stream_cap, []

        def sink(piece: bytes) -> bool:
            out.append(piece)
            self._wake()
            return len(out) > 64  # the reader is slow: reading pauses until it caught up

        try:
            self._attach(sink)
            while True:
                if out:
                    pieces, out[:] = out[:], []
                    if self._drain:
                        self._drain = False
                        self._conn.resume()
                    for data in pieces:
                        if left is not None:
                            if len(data) > left:
                                if left:
                                    yield data[:left]
                                raise UpstreamError(
                                    f"stream over body_size_limit ({self.stream_cap} bytes)")
                            left -= len(data)
                        yield data
                    continue
                if self._error is not None:
                    raise self._error
                if self._state == DONE:
                    return
                if idle_s is None:
                    await self._wait()
                else:
                    async with asyncio.timeout(idle_s):
                        await self._wait()
        finally:
            self._sink = None
            self.close()

    def close(self) -> None:
        if self._state != DONE:
            self.fail(UpstreamError("closed"))
        self._done(False)
