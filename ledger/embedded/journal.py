"""The embedded engine's durable log: an append-only journal with group commit, and checkpoints.

Invariants:
- A record is acknowledged only after the bytes of that record, and of every record before it,
  have been written and `fdatasync`ed. Concurrent requests share one sync (group commit).
- A record is `[u32 length][u32 crc32][payload]`. On open, a record that is incomplete or fails
  its checksum at the end of the newest segment is a torn write of an unacknowledged request:
  it is cut off, never half-applied. The same damage anywhere else is corruption and stops the
  engine with a clear error.
- Records are numbered from 0. Segment `journal-<n>.log` starts with record n. A checkpoint at
  record n (the engine's history store, `ledger/embedded/store.py`) holds the state after
  records 0..n-1; only once it is durable are the segments before n removed (and the snapshot
  files of format 1, `snapshot-<n>.bin`, which an engine before the store wrote and which
  `recover` still reads to upgrade a data directory). So at every instant the newest durable
  checkpoint plus the segments from its number on rebuild the state.
- A checkpoint is written by a thread of its own while requests go on. One at a time: a
  rotation first waits for the checkpoint before it. If one fails, the segments it would have
  replaced stay.
- One process at a time: the data directory is locked with `flock` for the engine's lifetime.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ledger.limits import JOURNAL_RECORD_BYTES_MAX

_HEADER = struct.Struct("<II")
_SNAPSHOT_MAGIC = b"CLSNAP01"
_SNAPSHOT_HEADER = struct.Struct("<8sQI")  # magic, record number, crc32 of body


_logger = logging.getLogger(__name__)


class DataDirectoryLocked(RuntimeError):
    """Another process has this data directory open."""


class JournalCorrupt(RuntimeError):
    """A record other than the last one is damaged: the journal cannot be replayed safely."""


class JournalClosed(RuntimeError):
    """The journal was closed (or failed) before this record became durable."""


@dataclass(frozen=True)
class Recovered:
    snapshot: bytes | None  # the snapshot body, or None to start empty
    records: list[bytes]  # payloads of the records after the snapshot, in order
    record_count: int  # number of the next record
    torn_bytes: int  # bytes cut from the end of the newest segment


class Journal:
    """Append-only, group-committed, checksummed log of requests, in one data directory."""

    def __init__(self, data_dir: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock_fd = _lock_directory(self.dir)
        self._fd = -1
        self._segment_bytes = 0
        self._record_count = 0
        # Group commit: payloads appended but not yet written, and how far each step reached.
        self._cond = threading.Condition()
        self._queue: list[bytes] = []
        self._appended = 0  # records appended (the position of the next one)
        self._durable = 0  # records written and synced
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._rotate_to: int | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._snapshot_thread: threading.Thread | None = None
        self._snapshot_error: BaseException | None = None
        self.syncs = 0  # how many times the writer synced: under load, far fewer than records

    # -------------------------------------------------------------------------------------
    # Recovery.

    def recover(self, start: int | None = None) -> Recovered:
        """Reads the records from `start` on (from the history store's checkpoint), or, when
        there is none yet, the newest valid snapshot of format 1 and the records after it;
        cuts a torn tail."""
        if start is None:
            snapshot, start = self._newest_snapshot()
        else:
            snapshot = None
        segments = sorted(self._segments())
        records: list[bytes] = []
        torn = 0
        count = start
        relevant = [(n, p) for n, p in segments if n >= start or _next_start(segments, n) > start]
        for i, (first, path) in enumerate(relevant):
            if first > count:
                raise JournalCorrupt(
                    f"journal gap: expected record {count}, {path.name} starts later"
                )
            last = i == len(relevant) - 1
            n = first
            for payload, end, damaged in _read_records(path):
                if damaged:
                    if not last:
                        raise JournalCorrupt(f"damaged record {n} in {path.name} at byte {end}")
                    torn = path.stat().st_size - end
                    _truncate(path, end)
                    break
                if n >= count:
                    records.append(payload)
                    count += 1
                n += 1
        self._record_count = count
        self._appended = self._durable = count
        return Recovered(snapshot, records, count, torn)

    def _newest_snapshot(self) -> tuple[bytes | None, int]:
        for path in sorted(self.dir.glob("snapshot-*.bin"), reverse=True):
            data = path.read_bytes()
            if len(data) < _SNAPSHOT_HEADER.size:
                continue
            magic, number, crc = _SNAPSHOT_HEADER.unpack_from(data)
            body = data[_SNAPSHOT_HEADER.size :]
            if magic == _SNAPSHOT_MAGIC and zlib.crc32(body) == crc:
                return body, number
        return None, 0

    def _segments(self) -> Iterator[tuple[int, Path]]:
        for path in self.dir.glob("journal-*.log"):
            yield int(path.stem.split("-")[1]), path

    # -------------------------------------------------------------------------------------
    # Appending.

    def start(self) -> None:
        """Opens the newest segment for appending and starts the writer thread."""
        segments = sorted(self._segments())
        path = segments[-1][1] if segments else self._segment_path(self._record_count)
        self._open_segment(path)
        self._thread = threading.Thread(target=self._writer, name="journal-writer", daemon=True)
        self._thread.start()

    def append(self, payload: bytes) -> int:
        """Queues one record; returns the position to wait for. Call under the state lock, so
        that the journal's order is the order in which requests were applied."""
        if len(payload) > JOURNAL_RECORD_BYTES_MAX:
            raise ValueError(f"journal record of {len(payload)} bytes is over the limit")
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._cond:
            self._check_open()
            self._queue.append(record)
            self._appended += 1
            self._cond.notify_all()
            return self._appended

    @property
    def appended(self) -> int:
        return self._appended

    def wait(self, position: int) -> None:
        """Blocks until every record up to `position` is durable."""
        if self._durable >= position:
            return
        with self._cond:
            while self._durable < position:
                self._check_open()
                self._cond.wait()

    async def wait_async(self, position: int) -> None:
        if self._durable >= position:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            self._check_open()
            if self._durable >= position:
                return
            self._waiters.append((position, loop, future))
        await future

    def rotate(
        self, checkpoint: Callable[[], None], record_number: int, keep_from: int | None = None
    ) -> None:
        """Starts a new segment at `record_number`, then has the checkpoint thread run
        `checkpoint()`, which makes the state after the records before `keep_from` (by default
        `record_number`) durable elsewhere (the caller's lock is not held while it runs). The
        segments before `keep_from`, and snapshots of format 1, are removed once it returns."""
        self.wait_snapshot(raise_error=False)
        assert record_number == self._appended
        keep = record_number if keep_from is None else keep_from
        with self._cond:
            self._queue.append(b"")  # marker: the writer switches segments here
            self._rotate_to = record_number
            self._cond.notify_all()
        self.wait_rotated()
        self._snapshot_error = None
        thread = threading.Thread(
            target=self._checkpoint,
            args=(checkpoint, keep),
            name="journal-checkpoint",
            daemon=True,
        )
        self._snapshot_thread = thread
        thread.start()

    def wait_snapshot(self, *, raise_error: bool = True) -> None:
        """Returns once the snapshot being written (if any) is done; re-raises its failure."""
        thread = self._snapshot_thread
        if thread is not None:
            thread.join()
            self._snapshot_thread = None
        if raise_error and self._snapshot_error is not None:
            raise self._snapshot_error

    def _checkpoint(self, checkpoint: Callable[[], None], record_number: int) -> None:
        try:
            checkpoint()
            for old in self.dir.glob("snapshot-*.bin"):
                old.unlink()
            for first, seg in list(self._segments()):
                if first < record_number:
                    seg.unlink()
            self._sync_dir()
        except BaseException as error:  # the old segments stay: nothing is lost
            self._snapshot_error = error
            _logger.exception(
                "checkpoint at record %d failed; the journal keeps its segments", record_number
            )

    def wait_rotated(self) -> None:
        with self._cond:
            while self._rotate_to is not None:
                self._check_open()
                self._cond.wait()

    @property
    def segment_bytes(self) -> int:
        return self._segment_bytes

    def close(self) -> None:
        self.wait_snapshot(raise_error=False)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        os.close(self._lock_fd)

    # -------------------------------------------------------------------------------------
    # The writer thread.

    def _writer(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue and self._closed:
                        return
                    batch, self._queue = self._queue, []
                self._write_batch(batch)
        except BaseException as error:  # a failed write fails every waiter, never silently
            with self._cond:
                self._error = error
                self._cond.notify_all()
                self._wake_waiters(error)

    def _write_batch(self, batch: list[bytes]) -> None:
        written = 0
        chunk: list[bytes] = []
        for record in batch:
            if record == b"":
                self._flush(chunk)
                written += len(chunk)
                chunk = []
                assert self._rotate_to is not None
                os.close(self._fd)
                self._open_segment(self._segment_path(self._rotate_to))
                continue
            chunk.append(record)
        self._flush(chunk)
        with self._cond:
            self._durable += len(batch) - batch.count(b"")
            self._rotate_to = None if b"" in batch else self._rotate_to
            self._cond.notify_all()
            self._wake_waiters(None)

    def _flush(self, chunk: list[bytes]) -> None:
        if not chunk:
            return
        data = b"".join(chunk)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self._fsync:
            os.fdatasync(self._fd)
        self.syncs += 1
        self._segment_bytes += len(data)

    def _wake_waiters(self, error: BaseException | None) -> None:
        ready = [w for w in self._waiters if error is not None or w[0] <= self._durable]
        if not ready:
            return
        self._waiters = [w for w in self._waiters if w not in ready] if error is None else []
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, loop, future in ready:
            by_loop.setdefault(loop, []).append(future)
        for loop, futures in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, futures, error)
            except RuntimeError:
                pass  # that loop is closed: nobody is waiting any more

    def _open_segment(self, path: Path) -> None:
        created = not path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segment_bytes = os.fstat(self._fd).st_size
        if created:
            self._sync_dir()

    def _segment_path(self, first: int) -> Path:
        return self.dir / f"journal-{first:020d}.log"

    def _sync_dir(self) -> None:
        if not self._fsync:
            return
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _check_open(self) -> None:
        if self._error is not None:
            raise JournalClosed(f"journal write failed: {self._error!r}") from self._error
        if self._closed:
            raise JournalClosed("journal is closed")


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(JournalClosed(f"journal write failed: {error!r}"))


def _read_records(path: Path) -> Iterator[tuple[bytes, int, bool]]:
    """Yields (payload, end offset, False) per valid record, then (b"", offset, True) at the
    first damaged or incomplete record, if any."""
    data = path.read_bytes()
    offset = 0
    size = len(data)
    while offset < size:
        if offset + _HEADER.size > size:
            yield b"", offset, True
            return
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        end = start + length
        if length > JOURNAL_RECORD_BYTES_MAX or end > size:
            yield b"", offset, True
            return
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            if end < size:
                # A whole record with more after it: not a torn write but damage to data that
                # was acknowledged. Cutting here would lose acknowledged requests.
                raise JournalCorrupt(f"record at byte {offset} of {path.name} fails its checksum")
            yield b"", offset, True
            return
        yield payload, end, False
        offset = end


def _next_start(segments: list[tuple[int, Path]], first: int) -> int:
    later = [n for n, _ in segments if n > first]
    return min(later) if later else 1 << 62


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def _lock_directory(directory: Path) -> int:
    path = directory / "LOCK"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirectoryLocked(
            f"data directory {directory} is in use by another process (pid {holder}); "
            "stop it or choose another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
