"""The projection feed against Postgres and the embedded engine: every kind of movement becomes
its entries with its dimensions, a timeout is an entry at the instant the engine released the
leg, the rollups add up the consumption, a rebuild from zero writes the same bytes, and two
feeds never write a batch twice. After each, reconciliation of the projection against the engine
is clean (each test has a database of its own: the check compares the whole catalog)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest

from grants.model import Category
from ledger import db
from ledger.codes import AccountCode
from ledger.ids import overdraft_account_id
from ledger.repositories import projection as repo
from ledger.repositories._rows import to_uuid
from ledger.repositories.dimensions import get_dimension_sets
from ledger.repositories.resources import ResourceKind
from tests.integration.projection_support import assert_reconciled, fresh_plane, own_pool
from wallets.catalog import OverdraftMode, Wallet
from wallets.control import ControlPlane, GrantRequest
from wallets.projection import ProjectionFeed

pytestmark = pytest.mark.anyio

TENANT = 7


@pytest.fixture
async def pool(fresh_db_url: Callable[..., str], template_db: str) -> AsyncIterator[db.Pool]:
    async for made in own_pool(fresh_db_url, template_db):
        yield made


@pytest.fixture
async def plane(pool: db.Pool) -> AsyncIterator[ControlPlane]:
    async for made in fresh_plane(pool):
        yield made


def feed_of(plane: ControlPlane, **options: Any) -> ProjectionFeed:
    return ProjectionFeed(plane.service.ledger, plane.pool, **options)


async def world(plane: ControlPlane, tag: int) -> tuple[Wallet, int]:
    credit_type, _ = await plane.create_credit_type(
        ledger=200 + tag,
        code=f"p{tag}",
        name="Credits",
        asset_scale=0,
        actor="a",
        tenant=0,
        key=f"ct{tag}",
    )
    customer, _ = await plane.create_customer(name="Acme", actor="a", tenant=0, key=f"cu{tag}")
    resource, _ = await plane.create_resource(
        customer_id=customer.id, kind=ResourceKind.AGENT, actor="a", tenant=0, key=f"re{tag}"
    )
    wallet, _ = await plane.create_wallet(
        resource_id=resource.id, ledger=credit_type.ledger, actor="a", tenant=0, key=f"wa{tag}"
    )
    return wallet, customer.id


async def grant(plane: ControlPlane, wallet: Wallet, key: str, amount: int, **kw: Any) -> int:
    request = GrantRequest(
        wallet_id=wallet.id,
        amount=amount,
        category=kw.pop("category", Category.PAID),
        consideration_minor=kw.pop("consideration_minor", 1000),
        currency="USD",
        **kw,
    )
    result, _ = await plane.issue_grant(request, tenant=TENANT, key=key, actor="a")
    return result.grant_id


async def rows(pool: db.Pool, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(sql, params)
        return list(await cursor.fetchall())


async def test_every_movement_becomes_its_entries_with_its_dimensions(
    plane: ControlPlane, pool: db.Pool
) -> None:
    wallet, customer = await world(plane, 1)
    block = await grant(plane, wallet, "g1", 1000)
    svc = plane.service
    chat = {"feature": "chat", "model": "small"}
    debit = await svc.debit(
        tenant=TENANT,
        key="d1",
        amount=30,
        ledger=wallet.ledger,
        wallet_id=wallet.id,
        dimensions=chat,
    )
    held = await svc.reserve(
        tenant=TENANT,
        key="r1",
        amount=20,
        ledger=wallet.ledger,
        wallet_id=wallet.id,
        timeout_s=60,
        dimensions={"feature": "search"},
    )
    await svc.settle(tenant=TENANT, key="s1", reservation_id=held.reservation_id, amount=15)
    let_go = await svc.reserve(
        tenant=TENANT, key="r2", amount=5, ledger=wallet.ledger, wallet_id=wallet.id, timeout_s=60
    )
    await svc.release(tenant=TENANT, key="x2", reservation_id=let_go.reservation_id)
    await plane.grant_service.refund(debit.operation_id, 10, tenant=TENANT, key="rf1")

    feed = feed_of(plane)
    await feed.catch_up()
    found = await rows(
        pool,
        "SELECT kind, amount, pending, operation_id, reservation_id, dimension_set_id, currency,"
        " value_minor, customer_id FROM ledger_entries WHERE account_id = %s ORDER BY engine_ts,"
        " kind",
        to_uuid(block),
    )
    kinds = [(r[0], int(r[1]), int(r[2])) for r in found]
    assert kinds == [
        ("grant", 1000, 0),
        ("debit", -30, 0),
        ("reserve", 0, 20),
        ("release", 0, -5),
        ("settle", -15, -15),
        ("reserve", 0, 5),
        ("release", 0, -5),
        ("refund", 10, 0),
    ]
    assert all(r[8].int == customer for r in found)
    # The debit's value at the block's cost basis: 30 of 1000 credits bought for $10.00.
    assert found[1][7] == Decimal("-30")
    async with pool.connection() as conn:
        sets = await get_dimension_sets(conn, {r[5].int for r in found if r[5] is not None})
    by_kind = {r[0]: sets.get(r[5].int) if r[5] else None for r in found}
    assert by_kind["debit"] == chat
    assert by_kind["settle"] == {"feature": "search"}
    assert by_kind["refund"] == chat  # a refund gives back under the debit's dimensions
    assert found[4][4].int == held.reservation_id
    # Summed, the entries are the block's balances in the engine.
    (account,) = await svc.ledger.lookup_accounts([block])
    assert sum(int(r[1]) for r in found) == account.credits_posted - account.debits_posted
    assert sum(int(r[2]) for r in found) == account.debits_pending
    await assert_reconciled(plane)


async def test_a_timeout_is_an_entry_at_the_instant_the_engine_released_the_leg(
    plane: ControlPlane, pool: db.Pool
) -> None:
    wallet, _ = await world(plane, 2)
    await grant(plane, wallet, "g2", 100)
    held = await plane.service.reserve(
        tenant=TENANT, key="r3", amount=40, ledger=wallet.ledger, wallet_id=wallet.id, timeout_s=1
    )
    feed = feed_of(plane, idle_s=0.01)
    await feed.catch_up()
    assert await rows(pool, "SELECT 1 FROM ledger_entries WHERE kind = 'timeout'") == []
    (reserve,) = await rows(pool, "SELECT engine_ts FROM ledger_entries WHERE kind = 'reserve'")
    # Nothing else happens: the feed writes a tick to see the engine's clock pass the expiry.
    deadline = time.monotonic() + 10
    while not await rows(pool, "SELECT 1 FROM ledger_entries WHERE kind = 'timeout'"):
        assert time.monotonic() < deadline, "the timeout never became an entry"
        await feed.step()
        await asyncio.sleep(0.05)
    (timeout,) = await rows(
        pool,
        "SELECT engine_ts, pending, reservation_id FROM ledger_entries WHERE kind = 'timeout'",
    )
    assert timeout[0] == reserve[0] + 1_000_000_000
    assert int(timeout[1]) == -40 and timeout[2].int == held.reservation_id
    await assert_reconciled(plane)


async def test_a_rebuild_writes_the_same_bytes_as_the_live_feed(
    plane: ControlPlane, pool: db.Pool
) -> None:
    wallet, _ = await world(plane, 3)
    await grant(plane, wallet, "g3", 10_000)
    await grant(plane, wallet, "g4", 50, category=Category.PROMOTIONAL, consideration_minor=0)
    feed = feed_of(plane, batch_max=7)  # small batches: chains land in many of them
    svc = plane.service
    for i in range(30):
        await svc.debit(
            tenant=TENANT,
            key=f"d{i}",
            amount=3 + i,
            ledger=wallet.ledger,
            wallet_id=wallet.id,
            dimensions={"user": f"u{i % 4}"},
        )
        if i % 5 == 0:
            r = await svc.reserve(
                tenant=TENANT,
                key=f"r{i}",
                amount=9,
                ledger=wallet.ledger,
                wallet_id=wallet.id,
                timeout_s=30,
            )
            await svc.settle(tenant=TENANT, key=f"s{i}", reservation_id=r.reservation_id, amount=4)
        await feed.step()
    await feed.catch_up()
    async with pool.connection() as conn:
        live = await repo.dump(conn)
        await repo.reset(conn)
    await feed_of(plane).catch_up()
    async with pool.connection() as conn:
        rebuilt = await repo.dump(conn)
    assert live.count(b"\n") > 50
    assert rebuilt == live
    await assert_reconciled(plane)


async def test_usage_rollups_add_up_consumption_by_dimension_set(
    plane: ControlPlane, pool: db.Pool
) -> None:
    wallet, customer = await world(plane, 4)
    await grant(plane, wallet, "g5", 1000, consideration_minor=2000)
    svc = plane.service
    for i in range(6):
        await svc.debit(
            tenant=TENANT,
            key=f"u{i}",
            amount=10,
            ledger=wallet.ledger,
            wallet_id=wallet.id,
            dimensions={"model": "a" if i % 2 else "b"},
        )
    await feed_of(plane).catch_up()
    found = await rows(
        pool,
        "SELECT d.dimensions->>'model', credits, value_minor, entries FROM usage_rollups u"
        " JOIN dimension_sets d ON d.id = u.dimension_set_id WHERE grain = 'day'"
        " AND customer_id = %s ORDER BY 1",
        to_uuid(customer),
    )
    assert [(r[0], int(r[1]), r[2], r[3]) for r in found] == [
        ("a", 30, Decimal("60"), 3),
        ("b", 30, Decimal("60"), 3),
    ]
    await assert_reconciled(plane)


async def test_two_feeds_never_write_a_batch_twice(plane: ControlPlane, pool: db.Pool) -> None:
    wallet, _ = await world(plane, 5)
    await grant(plane, wallet, "g6", 1000)
    for i in range(10):
        await plane.service.debit(
            tenant=TENANT, key=f"t{i}", amount=1, ledger=wallet.ledger, wallet_id=wallet.id
        )
    first, second = feed_of(plane), feed_of(plane)
    await first.step()
    await second.step()  # read the watermark before the first moves it again
    for i in range(10, 20):
        await plane.service.debit(
            tenant=TENANT, key=f"t{i}", amount=1, ledger=wallet.ledger, wallet_id=wallet.id
        )
    await first.step()
    with pytest.raises(repo.LostLeadership):
        await second.step()
    (count,) = await rows(pool, "SELECT count(*) FROM ledger_entries WHERE kind = 'debit'")
    assert count[0] == 20
    await assert_reconciled(plane)


async def test_a_repay_between_two_owned_accounts_is_an_entry_on_each(
    plane: ControlPlane, pool: db.Pool
) -> None:
    """A grant repays an overdraft from its block: -x on the block, +x on the overdraft
    account, two entries of one transfer and kind (the second was dropped while entries were
    keyed by transfer and kind alone; they are keyed by account too)."""
    wallet, _ = await world(plane, 6)
    wallet, _ = await plane.update_wallet(
        wallet.id,
        actor="a",
        tenant=0,
        key="soft6",
        overdraft_mode=OverdraftMode.SOFT,
        overdraft_limit=100,
    )
    await grant(plane, wallet, "g7", 10)
    await plane.service.debit(
        tenant=TENANT, key="over", amount=50, ledger=wallet.ledger, wallet_id=wallet.id
    )  # 40 drawn from the overdraft
    await grant(plane, wallet, "g8", 100)  # repays the 40
    await feed_of(plane).catch_up()
    found = await rows(
        pool,
        "SELECT account_kind, amount FROM ledger_entries WHERE kind = 'overdraft_repay'"
        " ORDER BY amount",
    )
    assert [(r[0], int(r[1])) for r in found] == [("block", -40), ("overdraft", 40)]
    overdraft = overdraft_account_id(wallet.id, AccountCode.OVERDRAFT)
    (account,) = await plane.service.ledger.lookup_accounts([overdraft])
    ((total,),) = await rows(
        pool, "SELECT sum(amount) FROM ledger_entries WHERE account_id = %s", to_uuid(overdraft)
    )
    assert int(total) == account.credits_posted - account.debits_posted == 100
    await assert_reconciled(plane)
