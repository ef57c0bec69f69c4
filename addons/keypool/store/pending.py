"""What the writer could not write yet: kept in memory, bounded, retried on the next flush.

Request rows are kept oldest first and dropped oldest first past the bound (counted);
per-minute usage sums are merged (so a long outage costs one entry per key and minute);
key states keep only the newest export, which supersedes the older ones.
"""
from __future__ import annotations

from collections import deque

from .base import Batch

MAX_ROWS = 20_000                 # request rows kept while the store cannot write
MAX_BYTES = 64 * 1024 * 1024      # ... and at most this much of their bodies
MAX_MINUTES = 100_000             # (key, minute) usage entries kept
ROW_OVERHEAD = 256                # what a row costs besides its bodies, roughly


class Pending:
    def __init__(self, max_rows: int = MAX_ROWS, max_bytes: int = MAX_BYTES,
                 max_minutes: int = MAX_MINUTES):
        self.max_rows, self.max_bytes, self.max_minutes = max_rows, max_bytes, max_minutes
        self._rows: deque[tuple[dict, int]] = deque()  # (row, its size)
        self._bytes = 0
        self._usage: dict[tuple[str, int], dict] = {}
        self._key_states: list[dict] = []
        self._spend: dict[tuple, dict] = {}
        self.dropped_rows = 0
        self.dropped_minutes = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __bool__(self) -> bool:
        return bool(self._rows or self._usage or self._key_states or self._spend)

    def merged(self, batch: Batch) -> Batch:
        """What to write now: everything kept, then ``batch`` (kept states only if it has none)."""
        if not self:
            return batch
        usage = {k: dict(v) for k, v in self._usage.items()}
        for k, sums in batch.usage.items():
            _add(usage, k, sums)
        spend = {k: dict(v) for k, v in self._spend.items()}
        for k, sums in batch.spend.items():
            _add(spend, k, sums)
        return Batch([r for r, _ in self._rows] + batch.requests, usage,
                     batch.key_states or self._key_states, spend)

    def keep(self, batch: Batch) -> None:
        """``batch`` (the result of :meth:`merged`) was not written: keep it, within the bounds."""
        self._rows.clear()
        self._bytes = 0
        for row in batch.requests:
            size = ROW_OVERHEAD + sum(len(row.get(f) or "") for f in ("request_body",
                                                                      "response_body"))
            self._rows.append((row, size))
            self._bytes += size
        while self._rows and (len(self._rows) > self.max_rows or self._bytes > self.max_bytes):
            _, size = self._rows.popleft()
            self._bytes -= size
            self.dropped_rows += 1
        self._usage = dict(batch.usage)
        if len(self._usage) > self.max_minutes:
            oldest = sorted(self._usage, key=lambda k: k[1])[:len(self._usage) - self.max_minutes]
            for k in oldest:
                del self._usage[k]
            self.dropped_minutes += len(oldest)
        self._key_states = batch.key_states
        self._spend = dict(batch.spend)  # one entry per day, key, client, provider, model

    def clear(self) -> None:
        self._rows.clear()
        self._bytes = 0
        self._usage = {}
        self._key_states = []
        self._spend = {}


def _add(usage: dict[tuple, dict], k: tuple, sums: dict) -> None:
    mine = usage.get(k)
    if mine is None:
        usage[k] = dict(sums)
        return
    for f, v in sums.items():
        if f != "provider":
            mine[f] = mine.get(f, 0) + v
