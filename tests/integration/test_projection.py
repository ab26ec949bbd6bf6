"""The movement projection's writers: from a thread of the service's process, or from a child
process (the server's); both write every movement once, with its dimensions, and go on after a
failure with the same batch."""

from __future__ import annotations

import asyncio
import time

import pytest

from ledger import db
from ledger.repositories import movements
from ledger.repositories.movements import MovementKind, NewMovement
from wallets import projection
from wallets.projection import MovementSink

pytestmark = pytest.mark.anyio

_next = iter(range(1, 1 << 30))


def _movements(n: int) -> list[NewMovement]:
    base = next(_next) << 20
    return [
        NewMovement(
            operation_id=base + i,
            kind=MovementKind.DEBIT,
            wallet_id=7,
            resource_id=8,
            credit_type_id=9,
            amount=i + 1,
            effective_at_ns=1_700_000_000_123_456_789 + i * 1000,
            dimensions={"feature": "chat", "n": str(i)},
        )
        for i in range(n)
    ]


async def _stored(pool: db.Pool, rows: list[NewMovement]) -> list[movements.Movement | None]:
    async with pool.connection() as conn:
        return [await movements.get_movement(conn, m.operation_id) for m in rows]


async def _run_until_written(sink: MovementSink, rows: list[NewMovement]) -> None:
    task = asyncio.create_task(sink.run())
    try:
        for m in rows:
            sink.offer(m)
        deadline = time.monotonic() + 30
        while sink.queued and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert sink.queued == 0, "the writer did not catch up"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("separate_process", [False, True])
async def test_every_movement_reaches_postgres_once(pool: db.Pool, separate_process: bool) -> None:
    sink = MovementSink(pool, separate_process=separate_process, batch_max=300, linger_s=0.001)
    rows = _movements(1000)
    await _run_until_written(sink, rows)
    stored = await _stored(pool, rows)
    assert all(s is not None for s in stored)
    first = stored[5]
    assert first is not None and first.dimensions == {"feature": "chat", "n": "5"}
    assert first.amount == 6 and first.effective_at.microsecond == 123456 + 5
    assert (sink.written, sink.dropped) == (1000, 0)


async def test_a_killed_writer_process_is_replaced_and_the_batch_sent_again(
    pool: db.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers: list[projection._ProcessWriter] = []
    real = projection._ProcessWriter

    class Killed(real):  # type: ignore[misc, valid-type]
        """The first writer's process dies before its first batch."""

        def __init__(self, target: projection._Target) -> None:
            super().__init__(target)
            writers.append(self)
            if len(writers) == 1:
                self.child.kill()
                self.child.wait()

    monkeypatch.setattr(projection, "_ProcessWriter", Killed)
    monkeypatch.setattr(projection, "RETRY_DELAY_S_MAX", 0.05)
    sink = MovementSink(pool, separate_process=True, linger_s=0.001)
    rows = _movements(50)
    await _run_until_written(sink, rows)
    assert len(writers) == 2
    assert all(s is not None for s in await _stored(pool, rows))


async def test_a_batch_postgres_refuses_is_retried_not_lost(pool: db.Pool) -> None:
    """A row Postgres refuses (a negative amount) fails its batch each time; the sink keeps it
    and retries (as for an outage), and at stop gives up after `stop_retry_s`, counting the
    rows as dropped. Good rows queued behind it wait, and are counted too."""
    sink = MovementSink(pool, separate_process=True, linger_s=0.001, stop_retry_s=0.3)
    bad = _movements(1)[0]
    bad = NewMovement(**{**{f: getattr(bad, f) for f in bad.__struct_fields__}, "amount": -1})
    task = asyncio.create_task(sink.run())
    sink.offer(bad)
    await asyncio.sleep(0.5)
    assert sink.queued == 1 and sink.written == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (sink.queued, sink.dropped) == (0, 1)
    assert await _stored(pool, [bad]) == [None]
