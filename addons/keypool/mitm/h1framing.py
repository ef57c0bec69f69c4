"""The framing of one answer of keymux's lean client as bytes arrive: head, length, chunked, EOF."""
from __future__ import annotations

import time

from ..reissue import UpstreamError
from .h1parse import HEAD_CAP, LINE_CAP, Head, chunk_size, content_length, decoder, parse_head

_now = time.time

# framing states
HEAD, LENGTH, CHUNKED, EOF, DONE = range(5)


class H1Framing:
    """``H1Reply``'s parsing half, fed by the connection's ``data_received``: the head's
    fields, then the body's bytes to ``_emit`` and its end to ``_finish`` (H1Reply's)."""

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
