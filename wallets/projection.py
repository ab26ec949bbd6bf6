"""What Postgres learns about hot-path movements, asynchronously, in batches.

The hot path hands each movement (with its dimensions: feature, model, session, user) to
`MovementSink.offer`, which never waits: it puts the row in a bounded in-process queue. A
background task writes the queue to Postgres in batches. Invariants:

- The caller's latency never includes Postgres. When the queue is full (Postgres down or slow
  for long), new rows are dropped and counted, never blocking a spend; the ledger still has
  every movement, so the projection can be rebuilt from TigerBeetle (without the dimensions).
- A batch that fails to write is retried with backoff, in order; rows are keyed by operation
  id, so a batch written twice (a retry after a lost commit) inserts nothing twice.
"""

from __future__ import annotations

import asyncio
import logging

from ledger.db import Pool
from ledger.repositories.movements import NewMovement, insert_movements

_logger = logging.getLogger(__name__)

MOVEMENT_QUEUE_MAX = 100_000
MOVEMENT_BATCH_MAX = 1_000
RETRY_DELAY_S_MAX = 10.0

assert MOVEMENT_BATCH_MAX <= MOVEMENT_QUEUE_MAX


class MovementSink:
    def __init__(self, pool: Pool, *, queue_max: int = MOVEMENT_QUEUE_MAX) -> None:
        self.pool = pool
        self.queue: asyncio.Queue[NewMovement] = asyncio.Queue(maxsize=queue_max)
        self.dropped = 0  # rows lost to a full queue (the ledger still has the movements)
        self.written = 0

    def offer(self, movement: NewMovement) -> None:
        """Queues a movement for Postgres; never waits."""
        try:
            self.queue.put_nowait(movement)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 10_000 == 0:
                _logger.warning("movement queue full: %d rows dropped so far", self.dropped)

    async def run(self) -> None:
        """Writes queued movements in batches until cancelled."""
        delay_s = 0.1
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MOVEMENT_BATCH_MAX and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            while True:
                try:
                    await self._write(batch)
                    delay_s = 0.1
                    break
                except Exception:  # Postgres unreachable: keep the batch, retry later
                    _logger.exception("writing %d movements failed; retrying", len(batch))
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, RETRY_DELAY_S_MAX)

    async def _write(self, batch: list[NewMovement]) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await insert_movements(conn, batch)
        self.written += len(batch)

    async def drain(self) -> None:
        """Writes whatever is queued now (at shutdown, and in tests)."""
        while not self.queue.empty():
            batch: list[NewMovement] = []
            while len(batch) < MOVEMENT_BATCH_MAX and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await self._write(batch)
