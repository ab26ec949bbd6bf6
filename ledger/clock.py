"""Clocks for the embedded engine: the wall clock, and a manual one that tests move forward."""

from __future__ import annotations

import datetime as dt
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


def rfc3339_of_ns(ns: int) -> str:
    """RFC 3339 text, UTC, to the nanosecond, of ns since the epoch: always nine fractional
    digits, so that the texts of two instants sort as the instants do."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    at = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return f"{at:%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


def datetime_of_ns(ns: int) -> dt.datetime:
    """An aware UTC datetime from ns since the epoch (microsecond precision, as Postgres keeps)."""
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, tz=dt.UTC) + dt.timedelta(
        microseconds=ns % 1_000_000_000 // 1000
    )


def ns_of_datetime(at: dt.datetime) -> int:
    """ns since the epoch of an aware datetime, exactly (no float on the way)."""
    assert at.tzinfo is not None, "naive datetimes are not allowed"
    delta = at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
