"""Clocks: the wall clock; a manual one that tests move forward; and the test clock of a
sandbox (`credit-ledger serve --test-clock`), which the service and its engine both read.

The test clock is frozen: it moves only when advanced, and only forward. Its instant is kept in
the engine's data directory (`TEST_CLOCK_FILE`, written to a temporary file, synced and renamed
into place), so that every process of the service reads the same instant (the server, the
engine's process, the projection feed) and a restart resumes at the instant reached, never
earlier. A data directory runs on one clock for its whole life: the engine's timestamps are
taken from it, and a history stamped by the wall clock cannot continue on a test clock (or the
other way round) without time appearing to stand still or jump.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path


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


def rfc3339_of(at: dt.datetime) -> str:
    """RFC 3339 text of an aware datetime in UTC, spelled as the API writes times
    (`2025-01-31T00:00:00Z`, microseconds when there are some): for the times in events' data."""
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


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


# The test clock's instant, in the engine's data directory: "<ns since the epoch>\n".
TEST_CLOCK_FILE = "test-clock"


class ClockMismatch(Exception):
    """A data directory is opened on a clock other than the one its history was written by."""


class TestClock:
    """A frozen clock that only moves forward when told to; with a `path`, durable and shared
    with the other processes that read it (each call notices a newer instant written there)."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, start_ns: int, path: Path | None = None) -> None:
        assert start_ns > 0
        self._now_ns = start_ns
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime, size) read last

    def __call__(self) -> int:
        if self.path is not None:
            self._refresh()
        return self._now_ns

    def _refresh(self) -> None:
        """Takes a newer instant another process wrote (the server advances, the engine's
        process and the projection feed read). A stat per call: a sandbox's cost only."""
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return
        stored = read_instant(self.path)
        with self._lock:
            self._seen = seen
            self._now_ns = max(self._now_ns, stored)

    def advance_to(self, target_ns: int) -> int:
        """Moves the clock to `target_ns` (durably first, when it has a path); returns the new
        instant. ValueError when that is earlier than now: a test clock never goes back."""
        with self._lock:
            if self.path is not None:
                self._now_ns = max(self._now_ns, read_instant(self.path))
            if target_ns < self._now_ns:
                raise ValueError(
                    f"the test clock is at {rfc3339_of_ns(self._now_ns)}; "
                    f"it does not go back to {rfc3339_of_ns(target_ns)}"
                )
            if self.path is not None:
                write_instant(self.path, target_ns)
            self._now_ns = target_ns
            return target_ns

    @classmethod
    def follow(cls, data_dir: Path) -> TestClock | None:
        """The test clock of an engine data directory, None when it runs on the wall clock."""
        path = Path(data_dir) / TEST_CLOCK_FILE
        if not path.exists():
            return None
        return cls(read_instant(path), path)

    @classmethod
    def start(cls, data_dir: Path, start_ns: int) -> TestClock:
        """The test clock of a server started with `--test-clock`: at `start_ns` on a fresh data
        directory, else where the stored clock stands (or at `start_ns` if that is later: a
        clock moves forward only). ClockMismatch on a data directory whose engine already
        holds a history written on the wall clock."""
        data_dir = Path(data_dir)
        path = data_dir / TEST_CLOCK_FILE
        if not path.exists():
            if engine_has_history(data_dir):
                raise ClockMismatch(
                    f"{data_dir} holds a ledger written on the wall clock; a test clock needs "
                    "a data directory of its own (--data-dir)"
                )
            data_dir.mkdir(parents=True, exist_ok=True)
            write_instant(path, start_ns)
        clock = cls(read_instant(path), path)
        if start_ns > clock():
            clock.advance_to(start_ns)
        return clock


def refuse_wall_clock_on(data_dir: Path) -> None:
    """ClockMismatch when an engine data directory runs on a test clock (the server was started
    without --test-clock on a sandbox's data)."""
    if (Path(data_dir) / TEST_CLOCK_FILE).exists():
        raise ClockMismatch(
            f"{data_dir} runs on a test clock; start the server with --test-clock to go on "
            "with it, or use another --data-dir"
        )


def engine_has_history(data_dir: Path) -> bool:
    """Whether an engine data directory holds any record (a snapshot, a non-empty segment)."""
    data_dir = Path(data_dir)
    if any(data_dir.glob("snapshot-*.bin")):
        return True
    return any(p.stat().st_size > 0 for p in data_dir.glob("journal-*.log"))


def read_instant(path: Path) -> int:
    text = Path(path).read_text().split()
    if not text or not text[0].isdigit():
        raise ClockMismatch(f"{path} does not hold a test clock's instant")
    return int(text[0])


def write_instant(path: Path, at_ns: int) -> None:
    """Writes the instant durably: a temporary file, synced, renamed over, the directory
    synced, so that a crash leaves the old instant or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{at_ns} {rfc3339_of_ns(at_ns)}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def business_clock(data_dir: Path | None) -> Callable[[], int]:
    """The clock business time is read from for an engine data directory: its test clock if it
    has one, else the wall clock."""
    clock = None if data_dir is None else TestClock.follow(data_dir)
    return wall_clock_ns if clock is None else clock
