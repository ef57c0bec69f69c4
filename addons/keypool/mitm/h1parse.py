"""Parsing an HTTP/1.1 answer for keymux's lean client (``h1client``, ``h1reply``): its
head, chunk-size lines, Content-Length, and inflating gzip/deflate/br in bounded steps.

Each function raises ValueError on input it does not accept; the reply turns that into an
``UpstreamError`` and closes the connection.
"""
from __future__ import annotations

import zlib

try:
    import brotli  # aiohttp inflates br when it is installed; so does this client
except ImportError:  # pragma: no cover
    brotli = None

HEAD_CAP = 256 << 10   # status line and header fields (aiohttp: 128 fields of 8190 bytes)
MAX_FIELDS = 128
LINE_CAP = 4096        # a chunk-size line, extensions included
STEP = 256 << 10       # inflated bytes per decompression step (a bomb stops at its cap)
_HEX = b"0123456789abcdefABCDEF"


class Head:
    __slots__ = ("status", "reason", "version", "fields")


def parse_head(raw: bytes) -> Head:
    """The status line and fields of an answer (without the blank line); ValueError if
    malformed."""
    lines = raw.split(b"\r\n")
    if len(lines) > MAX_FIELDS + 1:
        raise ValueError("too many header fields")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ValueError("malformed status line")
    head = Head()
    head.status, head.version = int(code), version
    head.reason = reason.decode("utf-8", "surrogateescape")
    fields = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            raise ValueError("malformed header field")  # obs-fold included
        fields.append((name, value.strip(b" \t")))
    head.fields = fields
    return head


def chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip(b" \t")
    if not size or len(size) > 15 or size.translate(None, _HEX):
        raise ValueError("malformed chunk size")
    return int(size, 16)


def content_length(values: list[bytes]) -> int | None:
    """One non-negative decimal length (repeated identical values allowed, as RFC 9110)."""
    if not values:
        return None
    parts = {p.strip() for v in values for p in v.split(b",")}
    if len(parts) != 1:
        raise ValueError("conflicting Content-Length")
    (value,) = parts
    if not value.isdigit() or len(value) > 18:
        raise ValueError("malformed Content-Length")
    return int(value)


def decoder(encoding: bytes):
    """A function inflating one piece in bounded steps (a generator of pieces), or None
    for identity or an encoding aiohttp too passes through as it is."""
    enc = encoding.strip().lower()
    if enc in (b"gzip", b"x-gzip"):
        return _Zlib(16 + zlib.MAX_WBITS)
    if enc == b"deflate":
        return _Zlib(None)
    if enc == b"br":
        if brotli is None:
            raise ValueError("cannot decode br")
        return _Brotli()
    if enc == b"zstd":  # aiohttp needs backports.zstd for it, which keymux does not install
        raise ValueError("cannot decode content-encoding zstd")
    return None


class _Zlib:
    __slots__ = ("wbits", "d")

    def __init__(self, wbits: int | None):
        self.wbits, self.d = wbits, None

    def __call__(self, data: bytes):
        if self.d is None:  # deflate: a zlib stream, or raw deflate (as aiohttp detects it)
            if self.wbits is None:
                self.wbits = zlib.MAX_WBITS if data and (data[0] & 0x0F) == 8 else -zlib.MAX_WBITS
            self.d = zlib.decompressobj(self.wbits)
        while data:
            try:
                out = self.d.decompress(data, STEP)
            except zlib.error:
                raise ValueError("cannot inflate the body") from None
            if out:
                yield out
            data = self.d.unconsumed_tail
            if self.d.eof and self.d.unused_data and self.wbits > 16:  # a gzip member more
                data, self.d = self.d.unused_data, zlib.decompressobj(self.wbits)


class _Brotli:
    __slots__ = ("d",)

    def __init__(self):
        self.d = brotli.Decompressor()

    def __call__(self, data: bytes):
        try:
            out = self.d.process(data, output_buffer_limit=STEP)
            if out:
                yield out
            # Past the limit, brotli holds more output: empty input until it takes more.
            while not self.d.is_finished() and not self.d.can_accept_more_data():
                out = self.d.process(b"", output_buffer_limit=STEP)
                if not out:
                    break
                yield out
        except brotli.error:
            raise ValueError("cannot inflate the body") from None


