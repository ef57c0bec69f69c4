"""One answer read by keymux's lean HTTP/1.1 client (``h1client``): its body and its readers.

The answer is parsed (``h1framing``) as bytes arrive in the connection's ``data_received`` (no
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
from .h1framing import DONE, HEAD, H1Framing

PENDING_CAP = 1 << 20  # body bytes held before anyone reads: reading pauses past this
_now = time.time


class H1Reply(H1Framing):
    """One attempt's answer on a ``h1client.H1Conn``; fed by its ``data_received``
    (``feed``, ``eof``: the framing, ``h1framing``)."""

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

    # -- the body as the framing (h1framing) hands it on -------------------------------

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
