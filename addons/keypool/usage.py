"""Token usage from provider answers: OpenAI, Responses API and Anthropic shapes.

``SseTap`` is a ``flow.response.stream`` callable: it forwards every chunk as it comes
(never buffering the stream), reads the usage on the way, and, when keymux itself asked
the upstream for ``stream_options.include_usage``, removes what the client did not ask for.

An upstream answer is untrusted input: nothing here may raise on it (deep nesting is a
RecursionError in ``json``), and an event that never ends is parsed only up to
``MAX_EVENT`` bytes; past that the tap passes the stream through unread.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

logger = logging.getLogger("keymux")
MAX_EVENT = 16 * 1024 * 1024  # a Responses API "completed" event may carry a whole image
MAX_TOKENS = 10 ** 9          # a count above this is not a count (and would overflow SQLite)


@dataclass(slots=True)
class Usage:
    """Tokens of one answer. ``input`` is as keymux always counted it (OpenAI's
    ``prompt_tokens``; Anthropic's ``input_tokens`` plus cache writes); ``cache_read`` and
    ``cache_write`` are the parts the provider billed at cache rates, where it says so."""
    input: int = 0
    output: int = 0
    seen: bool = False
    cache_read: int = 0
    cache_write: int = 0
    reads_apart: bool = False  # Anthropic: cache reads are not part of ``input``

    @property
    def input_total(self) -> int:
        """Every input token, cached ones included (what prices are applied to)."""
        return self.input + self.cache_read if self.reads_apart else self.input

    def absorb(self, usage: object) -> None:
        """Merge one ``usage`` object; Anthropic's later counts are cumulative, so max wins."""
        if not isinstance(usage, dict):
            return
        inp = _int(usage.get("prompt_tokens")) or _int(usage.get("input_tokens"))
        write = _int(usage.get("cache_creation_input_tokens"))
        inp += write
        out = _int(usage.get("completion_tokens")) or _int(usage.get("output_tokens"))
        if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
            read = _int(usage.get("cache_read_input_tokens"))  # Anthropic: apart from input
            self.reads_apart = True
        else:  # OpenAI chat / Responses API, DeepSeek: cached tokens are part of the prompt
            details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
            read = (_int(details.get("cached_tokens")) if isinstance(details, dict) else 0) \
                or _int(usage.get("prompt_cache_hit_tokens"))
        self.input = max(self.input, inp)
        self.output = max(self.output, out)
        self.cache_read = max(self.cache_read, read)
        self.cache_write = max(self.cache_write, write)
        self.seen = True


def _int(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_TOKENS else 0


def find_usage(obj: object) -> object:
    """The usage object of an answer or stream event, wherever its shape keeps it."""
    if not isinstance(obj, dict):
        return None
    if obj.get("usage") is not None:
        return obj["usage"]
    for holder in ("message", "response"):  # Anthropic message_start; Responses API events
        inner = obj.get(holder)
        if isinstance(inner, dict) and inner.get("usage") is not None:
            return inner["usage"]
    return None


def usage_of_body(body: bytes) -> Usage:
    """Usage of a whole (non-streamed) JSON answer; an unreadable body counts as none."""
    u = Usage()
    if b'"usage"' in body:
        try:
            u.absorb(find_usage(json.loads(body)))
        except (ValueError, RecursionError):  # not JSON, or nested beyond the parser's depth
            pass
    return u


_ENDS = (b"\n\n", b"\n\r\n")  # how every event end (``\r?\n\r?\n``) ends


def _event_ends(buf: bytes, start: int):
    """Offsets just past each event end (a blank line: ``\r?\n\r?\n``) found from ``start``.
    Two ``find`` calls per event: a regex would try a match at every byte."""
    find = buf.find
    i = start
    while True:
        a, b = find(b"\n\n", i), find(b"\n\r\n", i)
        if a < 0 and b < 0:
            return
        if b < 0 or 0 <= a < b:
            i = a + 2
        else:
            i = b + 3
        yield i
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null')
_COMPACT_NULL = b',"usage":null'


class SseTap:
    """Forward an SSE stream chunk by chunk while reading its usage.

    With ``strip_injected`` the tap removes the usage-only chunk (``"choices": []``) and the
    ``"usage": null`` fields that ``include_usage`` adds, so the client sees what it asked for.
    Complete events are then forwarded as soon as their blank line arrives.
    """

    def __init__(self, strip_injected: bool = False):
        self.usage = Usage()
        self.strip = strip_injected
        self._tail = b""
        self.blind = False  # gave up reading (event too long, or a bug): bytes pass through

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        # Returns a list when there may be nothing to send: an empty bytes chunk would be
        # written as chunked encoding's terminator and end the client's response early.
        # Never raises: mitmproxy would drop the connection and the client's stream with it.
        if self.blind:
            return [data] if data else []
        try:
            return self._feed(data)
        except Exception:  # noqa: BLE001 - the stream matters more than its usage
            logger.exception("keymux: cannot read a stream's usage; passing it through")
            # A stripping tap has sent nothing of its tail yet (_feed sets it last).
            return self._give_up(self._tail + data if self.strip else data)

    def _give_up(self, out: bytes) -> list[bytes]:
        """Stop reading for good; ``out``: every byte not yet sent on."""
        self.blind, self._tail = True, b""
        return [out] if out else []

    def _feed(self, data: bytes) -> bytes | list[bytes]:
        # Fast path, nearly every chunk of a stream: whole events (nothing held from the
        # last chunk, the chunk ends in a blank line) whose only usage is ``"usage": null``
        # (what include_usage adds): one count and at most one substitution, no split, no
        # parse. The event that carries the usage takes the slow path below.
        if not self._tail and data.endswith(_ENDS):
            n = data.count(b'"usage"')
            if not n:
                return data
            if data.count(_COMPACT_NULL) == n:  # the form providers send: no regex at all
                return data.replace(_COMPACT_NULL, b"") if self.strip else data
            out, nulls = _NULL_USAGE.subn(b"", data)
            if nulls == n:
                return out if self.strip else data  # never empty: the blank line stays
        if not data:  # end of stream: an unterminated last event goes out as it is
            rest = self._event(self._tail) if self._tail else b""
            self._tail = b""
            return [rest] if rest and self.strip else []
        # Only the new bytes (and 3 before them, for a split "\r\n\r\n") are searched for
        # an event's end: a long event arriving in small chunks costs linear time.
        start = max(0, len(self._tail) - 3)
        buf = self._tail + data if self._tail else data
        cut = 0
        kept: list[bytes] = []
        for end in _event_ends(buf, start):
            kept.append(self._event(buf[cut:end]))
            cut = end
        self._tail = buf[cut:]
        if len(self._tail) > MAX_EVENT:
            logger.warning("keymux: a stream event over %d MB; the stream's usage is not read",
                           MAX_EVENT >> 20)
            return self._give_up(b"".join(kept) + self._tail if self.strip else data)
        if not self.strip:
            return data
        out = b"".join(kept)
        return [out] if out else []

    def _event(self, event: bytes) -> bytes:
        """Read one event's usage; return what of it the client should get."""
        if self.strip:
            event = _NULL_USAGE.sub(b"", event)
        n = event.count(b'"usage"')
        if n == 0 or (n == 1 and _NULL_USAGE.search(event)):
            return event
        payload = b"".join(
            line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")
        )
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            return event
        self.usage.absorb(find_usage(obj))
        if self.strip and isinstance(obj, dict) and obj.get("choices") == []:
            return b""  # the usage-only chunk the client did not ask for
        return event
