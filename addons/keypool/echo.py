"""Masking of key secrets that an upstream echoes back (headers, bodies, streams).

An upstream may repeat the key it was sent: in an error message ("Incorrect API key
provided: sk-proj-…"), a debug header, or anywhere in a body or stream. ``Masker`` replaces
every configured key secret by its mask (``redact.mask``) before the client, the flow or
the log sees it. All secrets are searched, not only the one used: an upstream may know
others. One compiled alternation scans each body or chunk once.

Secrets shorter than ``MIN_SECRET`` are not searched for: masking them would corrupt
ordinary text, and no real provider key is that short.

Cost (35 secrets, measured): a 150-byte SSE chunk ~1 µs (one regex search over a trie of
the secrets), a 64 KB body ~0.2 ms (one ``in`` per secret: memmem beats the regex on long
data). Only data that holds a secret is rewritten.
"""
from __future__ import annotations

import re
from itertools import chain
from typing import Iterable

from .redact import mask

MIN_SECRET = 8
SHORT = 4096  # up to this size the trie regex is the faster test, beyond it ``in``


class Masker:
    def __init__(self, secrets: Iterable[str]):
        found = sorted({s.encode() for s in secrets if s and len(s) >= MIN_SECRET},
                       key=len, reverse=True)  # longest first: the alternation takes the first
        self._secrets = found
        self._masks = {s: mask(s.decode()).encode() for s in found}
        # Header fields stay ASCII: some clients refuse a field with "…" in it.
        self._ascii = {s: m.replace("…".encode(), b"...") for s, m in self._masks.items()}
        self._re = re.compile(_trie(found)) if found else None
        # What a stream holds back: the end of a chunk that may be the start of a secret.
        self.hold = max((len(s) for s in found), default=1) - 1
        self._prefixes = {s[:i] for s in found for i in range(1, len(s))}
        self._firsts = sorted({s[:1] for s in found})
        # A chunk whose last byte occurs in no secret ends no secret's start (an SSE event
        # ends in "\n"): ``partial`` answers 0 at once, without searching.
        self._inner = frozenset(b for s in found for b in s[:-1])

    def __bool__(self) -> bool:
        return self._re is not None

    def masked(self, data: bytes) -> bytes:
        """``data`` with every secret masked (unchanged, the same object, if none is in it)."""
        if self._re is None or not self._holds(data):
            return data
        return self._re.sub(self._swap, data)

    def _holds(self, data: bytes) -> bool:
        if len(data) <= SHORT:
            return self._re.search(data) is not None
        for s in self._secrets:
            if s in data:
                return True
        return False

    def masked_text(self, value: str) -> str:
        if self._re is None or len(value) < MIN_SECRET:
            return value
        return self.masked(value.encode("utf-8", "surrogateescape")).decode(
            "utf-8", "surrogateescape")

    def masked_fields(self, fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Header fields with every secret masked (``sk-...ab12``), in names and values."""
        if self._re is None or not self._holds(b"\n".join(chain.from_iterable(fields))):
            return fields
        swap = self._swap_ascii
        return [(self._re.sub(swap, k), self._re.sub(swap, v)) for k, v in fields]

    def stream(self) -> "StreamMasker":
        return StreamMasker(self)

    def _swap(self, m: re.Match) -> bytes:
        return self._masks[m.group()]

    def _swap_ascii(self, m: re.Match) -> bytes:
        return self._ascii[m.group()]

    def partial(self, data: bytes) -> int:
        """Length of the longest end of ``data`` that is the start of a secret (0: none)."""
        if not data or data[-1] not in self._inner:
            return 0
        start = max(0, len(data) - self.hold)
        best = len(data)
        for first in self._firsts:
            i = data.find(first, start)
            while i != -1 and i < best:
                if data[i:] in self._prefixes:
                    best = i
                    break
                i = data.find(first, i + 1)
        return len(data) - best


def _trie(words: list[bytes]) -> bytes:
    """One regex for ``words`` with shared prefixes factored out: at a position where no
    secret starts, it fails on the first byte instead of trying every secret in turn.
    Greedy, so the longest secret at a position wins."""
    root: dict = {}
    for w in words:
        node = root
        for c in w:
            node = node.setdefault(c, {})
        node[None] = {}

    def emit(node: dict) -> bytes:
        head = b""
        while len(node) == 1 and None not in node:  # a chain: no recursion per byte
            (c, node), = node.items()
            head += re.escape(bytes([c]))
        alts = [re.escape(bytes([c])) + emit(child)
                for c, child in sorted((c, n) for c, n in node.items() if c is not None)]
        if not alts:
            return head
        return head + b"(?:" + b"|".join(alts) + b")" + (b"?" if None in node else b"")

    return emit(root)


class StreamMasker:
    """Masks a stream chunk by chunk, also a secret split across chunks.

    Only the end of a chunk that could begin a secret is held back (at most the longest
    secret's length - 1 bytes) until the next chunk or ``flush``; an SSE event that ends
    in a blank line is never held.
    """

    def __init__(self, masker: Masker):
        self.masker = masker
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        m = self.masker
        if not m:
            return chunk
        data = m.masked(self._carry + chunk if self._carry else chunk)
        keep = m.partial(data)
        if keep:
            data, self._carry = data[:-keep], data[-keep:]
        else:
            self._carry = b""
        return data

    def flush(self) -> bytes:
        rest, self._carry = self._carry, b""
        return rest
