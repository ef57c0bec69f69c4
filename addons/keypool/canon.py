"""One canonical request: the path, the body's bytes and its JSON, each read once.

Every decision the gateway takes (reserved paths, routing, the client's allow-list, which
paths name a model, streams, usage injection, the upstream URL) is taken on what this
module returns, never on the client's spelling: a client that writes
``/x/../v1/./chat//completions`` or ``%63hat`` gets exactly what ``/v1/chat/completions``
gets, and a path that climbs above its root is refused instead of being normalised by some
client library on the way out. Anything this module cannot read unambiguously is a
``Refused`` (a 4xx), never a "looks harmless, pass it on".

    canonical_target(raw)   -> Target(path, query)  the decoded, dot-free path; query as sent
    screen_head(...)        -> Refused | None       limits checked on the head alone
    inflate(body, coding, limit) -> bytes            bounded decompression, after auth
    parse_json(body)        -> object                strict UTF-8, bounded nesting
"""
from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

MAX_TARGET = 8 * 1024        # request-target (path and query) -> 414 beyond
MAX_HEADERS = 64 * 1024      # all header names and values together -> 431 beyond
MAX_DEPTH = 64               # JSON nesting -> 400 beyond
MAX_MODEL = 256              # characters of a model name -> 400 beyond
MB = 1024 * 1024

# A path already in canonical form (the common case) passes with one regex match:
# segments of RFC 3986 pchars without '%' or ';', none of them "." or "..".
_CANONICAL = re.compile(r"(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9._~:@!$&'()*+,=-]+)+")
# Raw bytes a request-target may never hold (controls, space, non-ASCII, backslash).
_BAD_RAW = re.compile(r"[^\x21-\x7e]|\\")
# Decoded characters a path may never hold: controls, '/' or '\' smuggled in as %2f/%5c.
_BAD_DECODED = re.compile(r"[\x00-\x1f\x7f\\]")
_PCHAR_SAFE = "/:@!$&'()*+,=-._~"
_BAD_MODEL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# An escaped printable ASCII character (``\u006d`` for ``m``): JSON encoders never write
# one, a body spelling a key around a duplicate check does.
_ESCAPED_ASCII = re.compile(rb"\\u00[2-7][0-9a-fA-F]")


class Refused(Exception):
    """The request cannot be read unambiguously: answered with ``status`` and ``code``."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass(frozen=True, slots=True)
class Target:
    path: str      # decoded, no dot segments, no empty segments, no trailing '/' (but "/")
    query: str     # "" or "?..." exactly as the client sent it
    upstream: str  # the path percent-encoded again, query appended: what goes upstream


@lru_cache(maxsize=1024)  # a client sends the same few paths over and over
def canonical_target(raw: str) -> Target:
    """The client's request-target in canonical form, or Refused (400/414)."""
    if len(raw) > MAX_TARGET:
        raise Refused(414, f"the request URL is longer than {MAX_TARGET} bytes", "uri_too_long")
    path, sep, query = raw.partition("?")
    if _CANONICAL.fullmatch(path) and "#" not in query and not _BAD_RAW.search(query):
        return Target(path, sep + query, raw)
    if "#" in raw:
        raise Refused(400, "the request URL must not carry a #fragment", "invalid_path")
    if _BAD_RAW.search(raw):
        raise Refused(400, "the request URL holds a control character, a space, a backslash "
                      "or a non-ASCII byte", "invalid_path")
    if not path.startswith("/"):
        raise Refused(400, "the request target must be a path starting with '/'", "invalid_path")
    canonical = _remove_dots(_decode(path))
    enc = canonical if _CANONICAL.fullmatch(canonical) else quote(canonical, safe=_PCHAR_SAFE)
    return Target(canonical, sep + query, enc + sep + query)


def _decode(path: str) -> list[str]:
    """Percent-decode each segment (split first, so %2f cannot become a separator)."""
    out = []
    for seg in path.split("/")[1:]:
        if ";" in seg:  # some servers drop ";params": the upstream would see another path
            raise Refused(400, "the request path must not contain ';'", "invalid_path")
        if "%" in seg:
            try:
                raw = _unquote_strict(seg)
                seg = raw.decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise Refused(400, "the request path has a bad percent-encoding "
                              "(not %XX, or not UTF-8)", "invalid_path") from None
            if "/" in seg or _BAD_DECODED.search(seg):
                raise Refused(400, "the request path encodes '/', '\\' or a control "
                              "character", "invalid_path")
        out.append(seg)
    return out


def _unquote_strict(seg: str) -> bytes:
    parts = seg.split("%")
    buf = bytearray(parts[0].encode("ascii"))
    for p in parts[1:]:
        if len(p) < 2:
            raise ValueError("truncated escape")
        if not all(c in "0123456789abcdefABCDEF" for c in p[:2]):
            raise ValueError("non-hex escape")  # int() alone would take "+f"
        buf.append(int(p[:2], 16))
        buf += p[2:].encode("ascii")
    return bytes(buf)


def _remove_dots(segments: list[str]) -> str:
    """RFC 3986 5.2.4 on decoded segments, also dropping empty ones (``//``); a ``..``
    above the root is refused rather than silently dropped."""
    stack: list[str] = []
    for seg in segments:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not stack:
                raise Refused(400, "the request path climbs above its root", "invalid_path")
            stack.pop()
        else:
            stack.append(seg)
    return "/" + "/".join(stack)


# -- the head: limits that need no body ---------------------------------------------

def screen_head(method: str, target: str, authority: str, fields, max_body: int) -> Refused | None:
    """Refusals decided from the request head alone, before mitmproxy reads a body byte."""
    if method == "CONNECT":
        return Refused(405, "keymux is not a forward proxy: CONNECT is not supported",
                       "method_not_allowed")
    if authority:
        return Refused(400, "absolute-form request targets are not accepted: send a path",
                       "invalid_path")
    if len(target) > MAX_TARGET:
        return Refused(414, f"the request URL is longer than {MAX_TARGET} bytes", "uri_too_long")
    size = 0
    length = None
    for name, value in fields:
        size += len(name) + len(value) + 4
        if name.lower() == b"content-length":
            length = value
    if size > MAX_HEADERS:
        return Refused(431, f"the request headers are larger than {MAX_HEADERS // 1024} KiB",
                       "headers_too_large")
    if length is not None and length.isdigit() and int(length) > max_body:
        return too_large(max_body)
    return None


def too_large(max_body: int) -> Refused:
    return Refused(413, f"the request body is larger than routing.max_body_mb "
                   f"({max_body / MB:g} MB)", "request_too_large")


# -- the body -------------------------------------------------------------------------

def inflate(body: bytes, coding: str, limit: int) -> bytes:
    """The body without its Content-Encoding, never more than ``limit`` bytes (else 413);
    an encoding keymux does not know is 415. Call it only after authentication."""
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return body
    try:
        if coding in ("gzip", "x-gzip"):
            out = _zlib(body, 16 + zlib.MAX_WBITS, limit)
        elif coding == "deflate":  # RFC says zlib-wrapped; some clients send raw deflate
            try:
                out = _zlib(body, zlib.MAX_WBITS, limit)
            except zlib.error:
                out = _zlib(body, -zlib.MAX_WBITS, limit)
        elif coding == "br":
            out = _brotli(body, limit)
        elif coding == "zstd":
            out = _zstd(body, limit)
        else:
            raise Refused(415, f"unsupported Content-Encoding '{coding[:40]}' (use gzip, "
                          "deflate, br, zstd or none)", "unsupported_encoding")
    except Refused:
        raise
    except Exception:  # each library's own error type: a corrupt body is the client's
        raise Refused(400, f"the request body is not valid {coding}", "invalid_encoding") from None
    if len(out) > limit:
        raise too_large(limit)
    return out


def _zlib(body: bytes, wbits: int, limit: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, limit + 1)  # never more than one byte past the limit
    if len(out) <= limit and not d.eof:
        raise zlib.error("truncated")
    return out


def _brotli(body: bytes, limit: int) -> bytes:
    import brotli
    d = brotli.Decompressor()
    out = d.process(body, output_buffer_limit=limit + 1)
    if len(out) <= limit and not d.is_finished():
        raise brotli.error("truncated")
    return out


def _zstd(body: bytes, limit: int) -> bytes:
    import io

    import zstandard
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as r:
        return r.read(limit + 1)


def parse_json(body: bytes):
    """Strict JSON: UTF-8 only (json.loads would take UTF-16/32 bytes too), nesting at
    most MAX_DEPTH; ValueError with a reason otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the request body is not UTF-8") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise ValueError(f"the request body is not valid JSON: {e}") from None
    # Only a body with that many brackets can be that deep: the walk is rarely needed.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _depth(data) > MAX_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
    # Python keeps the last of duplicate keys, some upstreams the first: a body that could
    # hold two "model"s is parsed again, checking (the hook costs ~3x, so only then).
    if body.count(b'"model"') > 1 or body.count(b'"stream"') > 1 or _ESCAPED_ASCII.search(body):
        json.JSONDecoder(object_pairs_hook=_no_duplicates).decode(text)
    return data


def _no_duplicates(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("the request body repeats a JSON key")
    return d


def _depth(data) -> int:
    deepest, todo = 0, [(data, 1)]
    while todo:
        node, d = todo.pop()
        if d > deepest:
            deepest = d
            if d > MAX_DEPTH:
                break
        kids = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        todo.extend((k, d + 1) for k in kids if isinstance(k, (dict, list)))
    return deepest


def model_problem(model) -> str | None:
    """Why a body's ``model`` cannot be used, or None."""
    if not isinstance(model, str):
        return "'model' must be a string"
    if len(model) > MAX_MODEL:
        return f"'model' is longer than {MAX_MODEL} characters"
    if _BAD_MODEL.search(model):
        return "'model' holds a control character or an unpaired surrogate"
    return None



class HeaderMap(dict):
    """A request's header fields as the gateway reads them, built in one pass: lower-case
    names, a repeated field folded with ", " as mitmproxy's ``Headers.get`` folds it, values
    decoded as it decodes them (UTF-8, surrogateescape). A ``Headers.get`` costs a few µs
    (a miss too) and admission asks eight or so; this costs about that once. ``fields``
    keeps the raw fields for a reader that wants them (exposure's Host/Origin pass)."""

    __slots__ = ("fields",)

    def __init__(self, fields) -> None:
        super().__init__()
        self.fields = fields
        for name, value in fields:
            key = name.lower().decode("utf-8", "surrogateescape")
            text = value.decode("utf-8", "surrogateescape")
            seen = self.get(key)
            self[key] = text if seen is None else f"{seen}, {text}"
