"""The outbox (ledger/repositories/events.py): an event is written once per cause."""

from __future__ import annotations

import datetime as dt

import pytest

from ledger.db import Pool
from ledger.repositories import events

pytestmark = pytest.mark.anyio

AT = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


async def test_an_event_is_written_once_per_cause_and_dispatched_once(pool: Pool) -> None:
    async with pool.connection() as conn:
        first = await events.emit(
            conn, type_="balance.low", key=(7, 1), occurred_at=AT, data={"n": 1}, wallet_id=7
        )
        again = await events.emit(
            conn, type_="balance.low", key=(7, 1), occurred_at=AT, data={"n": 2}, wallet_id=7
        )
        other = await events.emit(
            conn, type_="balance.low", key=(7, 2), occurred_at=AT, data={"n": 3}, wallet_id=7
        )
        assert (first, again, other) == (True, False, True)
        stored = await events.get_event(conn, events.event_id("balance.low", 7, 1))
        assert stored is not None and stored.data == {"n": 1} and stored.wallet_id == 7
        async with conn.transaction():
            due = await events.undispatched(conn, 10)
            assert [e.data["n"] for e in due] == [1, 3]
            await events.mark_dispatched(conn, [due[0].id])
        assert [e.data["n"] for e in await events.undispatched(conn, 10)] == [3]


async def test_an_unknown_event_type_is_refused(pool: Pool) -> None:
    async with pool.connection() as conn:
        with pytest.raises(ValueError, match="unknown event type"):
            await events.emit(conn, type_="balance.lower", key=(1,), occurred_at=AT, data={})
