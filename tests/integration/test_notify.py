"""Cache invalidation: a committed catalog change reaches a listener; a rolled-back one never
does; a listener whose connection dies reconnects and says so; cancelling it stops it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from ledger import db
from ledger.notify import (
    CatalogChange,
    listen_catalog_changes,
    notify_catalog_changed,
    parse_payload,
)
from ledger.repositories import credit_types, customers, prices

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 1, 1, tzinfo=UTC)

WAIT_S = 5.0


@dataclass
class Listener:
    changes: asyncio.Queue[CatalogChange] = field(default_factory=asyncio.Queue)
    listening: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    connects: int = 0

    async def on_listening(self) -> None:
        self.connects += 1
        await self.listening.put(self.connects)

    def on_change(self, change: CatalogChange) -> None:  # a plain callback works too
        self.changes.put_nowait(change)

    async def next_change(self) -> CatalogChange:
        return await asyncio.wait_for(self.changes.get(), WAIT_S)


@pytest.fixture
async def listener(migrated_db_url: str) -> AsyncIterator[Listener]:
    listener = Listener()
    task = asyncio.create_task(
        listen_catalog_changes(
            migrated_db_url,
            listener.on_change,
            on_listening=listener.on_listening,
            reconnect_delay_s_max=0.2,
        )
    )
    assert await asyncio.wait_for(listener.listening.get(), WAIT_S) == 1
    yield listener
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT_S)


async def test_a_committed_change_notifies(pool: db.Pool, listener: Listener) -> None:
    async with pool.connection() as conn:
        await credit_types.insert_credit_type(conn, id=11, code="c11", name="C", asset_scale=0)
    assert await listener.next_change() == CatalogChange("credit_types", 11)

    big_id = 2**128 - 2
    async with pool.connection() as conn:
        await customers.insert_customer(conn, id=big_id, tenant=11, name="N")
        await prices.insert_price(
            conn, id=1, feature="chat", credit_type_id=11, credits_per_unit=1, effective_at=T0
        )
    # One notification per changed row, in order, when the transaction commits; uuid ids come
    # back as the same ints.
    assert await listener.next_change() == CatalogChange("customers", big_id)
    assert await listener.next_change() == CatalogChange("prices", 1)


async def test_a_rolled_back_change_does_not_notify(pool: db.Pool, listener: Listener) -> None:
    async with pool.connection() as conn:
        async with conn.transaction(force_rollback=True):
            await credit_types.insert_credit_type(conn, id=12, code="c12", name="C", asset_scale=0)
        await notify_catalog_changed(conn, "wallets", 5)
    # The explicit notification committed; the rolled-back insert never arrives.
    assert await listener.next_change() == CatalogChange("wallets", 5)
    assert listener.changes.empty()


async def test_the_listener_reconnects_after_losing_its_connection(
    pool: db.Pool, listener: Listener
) -> None:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = 'LISTEN catalog_changed'"
        )
        assert [row[0] for row in await cursor.fetchall()] == [True]
    # It reconnects and says so, so that its owner reloads what it may have missed.
    assert await asyncio.wait_for(listener.listening.get(), WAIT_S) == 2
    async with pool.connection() as conn:
        await notify_catalog_changed(conn, "grants", 99)
    assert await listener.next_change() == CatalogChange("grants", 99)


async def test_a_change_that_cannot_be_applied_starts_the_listener_over(
    pool: db.Pool, migrated_db_url: str
) -> None:
    """The engine restarting while a change is applied, say: the listener does not end (the
    cache would go stale for good); it reconnects and its owner reloads everything."""
    listener = Listener()
    failures = [RuntimeError("the engine is restarting")]

    def on_change(change: CatalogChange) -> None:
        if failures:
            raise failures.pop()
        listener.on_change(change)

    task = asyncio.create_task(
        listen_catalog_changes(
            migrated_db_url,
            on_change,
            on_listening=listener.on_listening,
            reconnect_delay_s_max=0.2,
        )
    )
    try:
        assert await asyncio.wait_for(listener.listening.get(), WAIT_S) == 1
        async with pool.connection() as conn:
            await notify_catalog_changed(conn, "grants", 7)
        assert await asyncio.wait_for(listener.listening.get(), WAIT_S) == 2  # a reload
        async with pool.connection() as conn:
            await notify_catalog_changed(conn, "grants", 8)
        assert await listener.next_change() == CatalogChange("grants", 8)
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_payloads_parse_to_int_ids() -> None:
    assert parse_payload("credit_types:7") == CatalogChange("credit_types", 7)
    assert parse_payload("wallets:00000000-0000-0000-0000-00000000000a") == CatalogChange(
        "wallets", 10
    )
    for bad in ("wallets", "wallets:", ":5", "wallets:nope"):
        with pytest.raises(ValueError):
            parse_payload(bad)
