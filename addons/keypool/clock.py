"""Injectable clocks: policy code never calls time.time() itself."""
from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; for cooldowns, windows and latency."""

    def wall(self) -> float:
        """Unix time; only for what users read (timestamps, daily resets)."""


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)


class FakeClock:
    """A clock for tests that moves only when told to."""

    def __init__(self, start: float = 1_000.0, wall_start: float = 1_700_000_000.0):
        self._mono = start
        self._offset = wall_start - start

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._mono + self._offset

    def advance(self, seconds: float) -> None:
        self._mono += seconds
