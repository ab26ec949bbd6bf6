"""Clocks for the embedded engine: the wall clock, and a manual one that tests move forward."""

from __future__ import annotations

import threading
import time


def wall_clock_ns() -> int:
    """Nanoseconds since the Unix epoch, as TigerBeetle's cluster time is."""
    return time.time_ns()


class ManualClock:
    """A clock that only moves when told to, so tests expire pending transfers without sleeping."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        assert start_ns > 0
        self._now_ns = start_ns
        self._lock = threading.Lock()

    def __call__(self) -> int:
        return self._now_ns

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        with self._lock:
            self._now_ns += int(seconds * 1_000_000_000)

    def advance_ns(self, nanoseconds: int) -> None:
        assert nanoseconds >= 0
        with self._lock:
            self._now_ns += nanoseconds
