"""The store interface and the batch the gateway hands it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Batch:
    requests: list[dict] = field(default_factory=list)       # rows of the requests table
    usage: dict[tuple[str, int], dict] = field(default_factory=dict)  # (key, minute) -> sums
    key_states: list[dict] = field(default_factory=list)     # Pool.export_state()
    # (day, key, client, provider, model) -> sums to add (spend.Ledger.drain)
    spend: dict[tuple[str, str, str, str, str], dict] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.requests or self.usage or self.key_states or self.spend)


class Store(Protocol):
    def load_keys(self) -> list[dict]:
        """Saved key states (cooldowns as Unix times, counters), for Pool.restore_state."""

    def load_spend(self, since_day: str) -> list[dict]:
        """``spend_day`` rows from that day (a "YYYY-MM-DD" label) on, for Ledger.restore."""

    def write(self, batch: Batch) -> None:
        """Persist a batch atomically (called from the writer thread only)."""

    def prune(self, before: float) -> int:
        """Drop request-log rows (and usage minutes) older than ``before``; how many rows."""

    def export(self) -> dict:
        """Everything, as JSON-able data (``keymux state export``)."""

    def import_(self, data: dict) -> None:
        """Replace the state with an export's (``keymux state import``)."""

    def close(self) -> None: ...
