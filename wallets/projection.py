"""What Postgres learns about hot-path movements, asynchronously, in batches.

The hot path hands each movement (with its dimensions: feature, model, session, user) to
`MovementSink.offer`, which never waits: it appends the row to a bounded in-process queue. A
writer thread of its own COPYs the queue to Postgres in batches, on a connection of its own or,
with `separate_process` (the server), through a child process (`wallets.movement_writer`), so
that the rows' encoding and the Postgres client do not run under the requests' interpreter
lock. Invariants:

- The caller's latency never includes Postgres.
- The writer does not share the request loop. On the loop, under load, each of its awaits
  waited behind every ready request (batch ingestion at 15,000 debits/s left it about 1,000
  rows/s, and the queue overflowed); as a thread it gets the interpreter every few ms.
- Batch ingestion waits for room (`room()`) while the queue is more than half full, so a
  sustained load is slowed to what Postgres absorbs instead of losing rows. Only when Postgres
  stalls for longer than that wait, or is down, does a full queue drop new rows, counted
  (`dropped`, and the `credit_movements_dropped` metric); the ledger still has every movement,
  so the projection can be rebuilt from TigerBeetle (without the dimensions).
- A batch that fails to write is retried with backoff, in order, on a new connection; rows are
  keyed by operation id, so a batch written twice (a retry after a lost commit) inserts nothing
  twice. At shutdown the writer writes what is queued, retrying for at most
  `stop_retry_s` when Postgres does not answer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any, Protocol

import msgspec
import psycopg

from ledger.db import Pool
from ledger.repositories.movements import NewMovement, insert_movements
from wallets import movement_writer

_logger = logging.getLogger(__name__)

MOVEMENT_QUEUE_MAX = 100_000
MOVEMENT_BATCH_MAX = 2_000
RETRY_DELAY_S_MAX = 10.0
STOP_RETRY_S = 10.0
ROOM_WAIT_S_MAX = 1.0
# How long the writer lets a batch fill before it writes (bounds how late Postgres learns).
LINGER_S = 0.05

assert MOVEMENT_BATCH_MAX <= MOVEMENT_QUEUE_MAX


class MovementSink:
    def __init__(
        self,
        pool: Pool,
        *,
        queue_max: int = MOVEMENT_QUEUE_MAX,
        batch_max: int = MOVEMENT_BATCH_MAX,
        stop_retry_s: float = STOP_RETRY_S,
        linger_s: float = LINGER_S,
        separate_process: bool = False,
    ) -> None:
        self.pool = pool
        self.linger_s = linger_s
        # Write from a child process rather than from a thread of this one (the server does).
        self.separate_process = separate_process
        self.queue_max = queue_max
        self.batch_max = batch_max
        self.stop_retry_s = stop_retry_s
        self._rows: collections.deque[NewMovement] = collections.deque()
        self._in_flight = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0  # rows lost to a full queue (the ledger still has the movements)
        self.written = 0

    @property
    def queued(self) -> int:
        """Rows not yet in Postgres (queued, or in the batch being written)."""
        return len(self._rows) + self._in_flight

    def offer(self, movement: NewMovement) -> None:
        """Queues a movement for Postgres; never waits."""
        if len(self._rows) >= self.queue_max:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 10_000 == 0:
                _logger.warning("movement queue full: %d rows dropped so far", self.dropped)
            return
        self._rows.append(movement)
        if not self._wake.is_set():
            self._wake.set()

    async def room(self, wait_s_max: float = ROOM_WAIT_S_MAX) -> None:
        """Waits (at most `wait_s_max`) while the queue is more than half full: what a bulk
        producer calls before adding many rows."""
        deadline = time.monotonic() + wait_s_max
        while len(self._rows) > self.queue_max // 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def run(self) -> None:
        """Runs the writer thread until cancelled; then lets it write what is queued."""
        self._stop.clear()
        thread = threading.Thread(target=self._writer, name="movements", daemon=True)
        self._thread = thread
        thread.start()
        try:
            while thread.is_alive():
                await asyncio.sleep(1.0)
            raise RuntimeError("the movement writer thread died")
        finally:
            self._stop.set()
            self._wake.set()
            await asyncio.to_thread(thread.join)
            self._thread = None

    async def drain(self) -> None:
        """Returns once everything queued now is written (at shutdown, and in tests)."""
        if self._thread is not None and self._thread.is_alive():
            while self.queued:
                await asyncio.sleep(0.005)
            return
        while self._rows:
            batch = self._take()
            async with self.pool.connection() as conn:
                await insert_movements(conn, batch)
            self._done(batch)

    # -- the writer thread --------------------------------------------------------------------

    def _take(self) -> list[NewMovement]:
        rows = self._rows
        batch = [rows.popleft() for _ in range(min(len(rows), self.batch_max))]
        self._in_flight = len(batch)
        return batch

    def _done(self, batch: list[NewMovement]) -> None:
        self.written += len(batch)
        self._in_flight = 0

    def _writer(self) -> None:
        asyncio.run(self._write_until_stopped())

    def _new_writer(self) -> _Writer:
        target = _Target(str(self.pool.conninfo), _kwargs(self.pool))
        return _ProcessWriter(target) if self.separate_process else _ConnectionWriter(target)

    async def _write_until_stopped(self) -> None:
        writer: _Writer | None = None
        try:
            while True:
                if not self._rows:
                    if self._stop.is_set():
                        return
                    self._wake.clear()
                    if not self._rows:
                        self._wake.wait(0.5)  # this thread's loop has nothing else to run
                    continue
                if len(self._rows) < self.batch_max and not self._stop.is_set():
                    # Under load, rows keep coming: a moment's wait fills the batch, and
                    # fewer, larger transactions cost less of the interpreter the requests use.
                    time.sleep(self.linger_s)
                batch = self._take()
                writer = await self._write(writer, batch)
        finally:
            if writer is not None:
                await writer.close()

    async def _write(self, writer: _Writer | None, batch: list[NewMovement]) -> _Writer | None:
        delay_s = 0.1
        stopping_since: float | None = None
        while True:
            try:
                if writer is None:
                    writer = self._new_writer()
                await writer.write(batch)
                self._done(batch)
                return writer
            except (psycopg.Error, OSError, EOFError, WriterFailed):
                _logger.exception("writing %d movements failed; retrying", len(batch))
                if writer is not None:
                    await writer.close()
                writer = None
            if self._stop.is_set():
                stopping_since = stopping_since or time.monotonic()
                if time.monotonic() - stopping_since > self.stop_retry_s:
                    lost = len(batch) + len(self._rows)
                    self.dropped += lost
                    self._rows.clear()
                    self._in_flight = 0
                    _logger.error("stopping with Postgres unreachable: %d movements lost", lost)
                    return None
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RETRY_DELAY_S_MAX)


# -- where a batch is written ---------------------------------------------------------------


class WriterFailed(RuntimeError):
    """The writer process could not write a batch (it says why); the batch is sent again."""


class _Target(msgspec.Struct, frozen=True):
    conninfo: str
    kwargs: dict[str, Any]  # connection parameters (strings)


def _kwargs(pool: Pool) -> dict[str, Any]:
    kwargs = pool.kwargs if isinstance(pool.kwargs, dict) else {}
    return {str(k): str(v) for k, v in kwargs.items()}


class _Writer(Protocol):
    async def write(self, batch: list[NewMovement]) -> None: ...

    async def close(self) -> None: ...


class _ConnectionWriter:
    """Writes from the writer thread, on a connection of its own."""

    def __init__(self, target: _Target) -> None:
        self.target = target
        self.conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    async def write(self, batch: list[NewMovement]) -> None:
        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(
                self.target.conninfo, **self.target.kwargs
            )
        await insert_movements(self.conn, batch)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class _ProcessWriter:
    """Hands batches to a child process (`python -m wallets.movement_writer`) that writes them:
    the rows' encoding and the Postgres client then run on the other core, not under this
    process's interpreter lock. Frames on its stdin and stdout are [u64 length][payload]; a
    batch is a marshal of plain tuples (`movement_writer.encode`)."""

    def __init__(self, target: _Target) -> None:
        env = {**os.environ, movement_writer.TARGET_ENV: msgspec.json.encode(target).decode()}
        self.child = subprocess.Popen(
            [sys.executable, "-m", "wallets.movement_writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    async def write(self, batch: list[NewMovement]) -> None:
        assert self.child.stdin is not None and self.child.stdout is not None
        movement_writer.send_frame(self.child.stdin, movement_writer.encode(batch))
        answer = movement_writer.read_frame(self.child.stdout)
        if answer is None:
            raise EOFError("the movement writer process exited")
        if not answer.startswith(b"K"):
            raise WriterFailed(answer[1:].decode(errors="replace"))

    async def close(self) -> None:
        child = self.child
        try:
            if child.stdin is not None:
                movement_writer.send_frame(child.stdin, b"")
                child.stdin.close()
            child.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            child.kill()
            child.wait()
