"""Collects, on the event loop, what the writer will persist: no I/O, O(1) per event."""
from __future__ import annotations

from .base import Batch

# Failure outcomes -> the usage_minute column that counts them.
CLASS_COLUMN = {"rate_limited": "rate_limited", "quota": "auth_errors", "auth": "auth_errors",
                "server": "server_errors", "client_error": "client_errors"}


class Recorder:
    def __init__(self) -> None:
        self._batch = Batch()

    def attempt(self, wall: float, key: str, provider: str, outcome: str, latency: float,
                tokens_in: int, tokens_out: int) -> None:
        sums = self._batch.usage.get((key, int(wall // 60)))
        if sums is None:
            sums = self._batch.usage[(key, int(wall // 60))] = {"provider": provider}
        sums["requests"] = sums.get("requests", 0) + 1
        column = "successes" if outcome == "ok" else CLASS_COLUMN.get(outcome)
        if column:
            sums[column] = sums.get(column, 0) + 1
        sums["tokens_in"] = sums.get("tokens_in", 0) + tokens_in
        sums["tokens_out"] = sums.get("tokens_out", 0) + tokens_out
        sums["latency_sum"] = sums.get("latency_sum", 0.0) + latency

    def request(self, row: dict) -> None:
        self._batch.requests.append(row)

    def drain(self, key_states: list[dict]) -> Batch:
        batch, self._batch = self._batch, Batch()
        batch.key_states = key_states
        return batch
