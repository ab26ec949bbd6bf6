# ruff: noqa: F811 - the fixtures imported from clocked_fixtures stand again as parameters
"""A rollover in the books (finance/README.md "Rollover"): neither revenue nor breakage; the
source block's slice leaves at value(D2) - value(D1) and its rollover block is born with
exactly that consideration, so the two post exactly what was paid in total."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest

from finance import balances
from finance.posting import Poster
from grants.model import Category, RolloverPolicy
from ledger import db
from ledger.clock import ManualClock, datetime_of_ns
from ledger.repositories import finance as repo
from ledger.repositories.resources import ResourceKind
from tests.integration.clocked_fixtures import clock, plane, pool  # noqa: F401
from tests.integration.projection_support import (
    assert_reconciled,
)
from wallets.control import ControlPlane, GrantRequest, rollover_block_id, rollover_floor_id
from wallets.projection import ProjectionFeed

pytestmark = pytest.mark.anyio
TENANT = 7
LEDGER = 420


async def _wallet(plane: ControlPlane) -> int:
    await plane.create_credit_type(
        ledger=LEDGER, code="fr", name="R", asset_scale=0, actor="a", tenant=0, key="ct"
    )
    customer, _ = await plane.create_customer(name="C", actor="a", tenant=0, key="cu")
    resource, _ = await plane.create_resource(
        customer_id=customer.id, kind=ResourceKind.AGENT, actor="a", tenant=0, key="re"
    )
    wallet, _ = await plane.create_wallet(
        resource_id=resource.id, ledger=LEDGER, actor="a", tenant=0, key="wa"
    )
    return wallet.id


async def _journals(pool: db.Pool) -> list[tuple[str, int, str, int, int]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT j.kind, j.block_id, l.account, l.debit_minor, l.credit_minor"
            " FROM finance_journals j JOIN finance_journal_lines l"
            " ON l.journal_id = j.id AND l.posting_period = j.posting_period ORDER BY j.seq, l.line"
        )
        return [
            (k, uuid.UUID(str(b)).int, a, int(d), int(c))
            for k, b, a, d, c in await cursor.fetchall()
        ]


async def _history(
    plane: ControlPlane,
    clock: ManualClock,
    *,
    min_credits: int = 0,
    proportional: bool = False,
    currency: str = "USD",
    rate: str | None = None,
) -> tuple[int, list[tuple[str, int, str, int, int]]]:
    wallet = await _wallet(plane)
    if proportional:
        async with plane.pool.connection() as conn:
            await repo.add_policy(
                conn,
                credit_type_id=LEDGER,
                effective_from=datetime_of_ns(clock()) - dt.timedelta(days=1),
                method="proportional",
                rate=Decimal("0.3"),
                actor="a",
            )
    now = datetime_of_ns(clock())
    result, _ = await plane.issue_grant(
        GrantRequest(
            wallet_id=wallet,
            amount=1000,
            category=Category.PAID,
            consideration_minor=9999,
            currency=currency,
            exchange_rate=rate,
            expires_at=now + dt.timedelta(days=10),
            rollover=RolloverPolicy(
                max_credits=500, min_credits=min_credits, expires_at=now + dt.timedelta(days=40)
            ),
        ),
        tenant=TENANT,
        key="g",
        actor="a",
    )
    source = result.grant_id
    svc = plane.service
    await svc.debit(tenant=TENANT, key="d1", amount=333, ledger=LEDGER, wallet_id=wallet)
    clock.advance(10 * 86_400)  # the source expires with 667 left: 500 roll over
    await plane.sweep(clock())
    async with plane.pool.connection() as conn:  # finance goes by the value moved, not the row
        await conn.execute(
            "UPDATE grants SET consideration_minor = 1 WHERE id = %s",
            (uuid.UUID(int=rollover_block_id(source)),),
        )
    await svc.debit(tenant=TENANT, key="d2", amount=123, ledger=LEDGER, wallet_id=wallet)
    clock.advance(30 * 86_400)  # the rollover block expires with 377 left
    await plane.sweep(clock())
    await plane.sweep(clock())
    feed = ProjectionFeed(svc.ledger, plane.pool, clock_ns=clock)
    await feed.catch_up()
    await Poster(plane.pool, entries_max=2).catch_up()
    return source, await _journals(plane.pool)


def _liability(rows: list[tuple[str, int, str, int, int]], block: int) -> tuple[int, int]:
    """(2100 debits, 2100 credits) of a block's journals."""
    debit = sum(d for _, b, a, d, _ in rows if b == block and a == "2100")
    credit = sum(c for _, b, a, _, c in rows if b == block and a == "2100")
    return debit, credit


@pytest.mark.parametrize(
    ("proportional", "currency", "rate"),
    [(False, "USD", None), (True, "USD", None), (False, "EUR", "1.0842"), (True, "JPY", "0.0067")],
)
async def test_source_and_rollover_block_post_exactly_what_was_paid(
    plane: ControlPlane, clock: ManualClock, proportional: bool, currency: str, rate: str | None
) -> None:
    source, rows = await _history(
        plane, clock, proportional=proportional, currency=currency, rate=rate
    )
    rolled = rollover_block_id(source)
    # value(333) = round(9999 x 333 / 1000) = 3330; value(833) = 8329: the slice is 4999.
    out = [r for r in rows if r[0] == "rollover" and r[1] == source]
    into = [r for r in rows if r[0] == "rollover" and r[1] == rolled]
    assert [(a, d, c) for _, _, a, d, c in out] == [("2100", 4999, 0), ("2190", 0, 4999)]
    assert [(a, d, c) for _, _, a, d, c in into] == [("2190", 4999, 0), ("2100", 0, 4999)]
    # Each block sums to its consideration: the source to 9999, the rollover block to 4999.
    assert _liability(rows, source) == (9999, 9999)
    assert _liability(rows, rolled) == (4999, 4999)
    # Revenue (usage + breakage, net) is the cash, to the cent; 2190 nets to zero.
    revenue = sum(c - d for _, _, a, d, c in rows if a in ("4000", "4050"))
    assert revenue == 9999
    assert sum(d - c for _, _, a, d, c in rows if a == "2190") == 0
    async with plane.pool.connection() as conn:  # in the functional currency too
        cursor = await conn.execute(
            "SELECT l.account, j.block_id,"
            " sum(l.functional_debit_minor - l.functional_credit_minor)"
            " FROM finance_journals j JOIN finance_journal_lines l"
            " ON l.journal_id = j.id AND l.posting_period = j.posting_period"
            " GROUP BY l.account, j.block_id"
        )
        functional = {(a, uuid.UUID(str(b)).int): int(n) for a, b, n in await cursor.fetchall()}
    assert sum(n for (a, _), n in functional.items() if a == "2190") == 0
    assert functional[("2100", source)] == functional[("2100", rolled)] == 0
    async with plane.pool.connection() as conn:
        blocks = await repo.blocks(conn, {source, rolled})
        assert blocks[rolled].consideration_minor == 4999
        assert (blocks[rolled].credits, blocks[rolled].currency) == (500, currency)
        assert blocks[source].credits_out == 1000 and blocks[rolled].credits_out == 500
        for period in await repo.active_periods(conn):
            assert await repo.unbalanced_journals(conn, period) == 0
            assert await repo.block_differences(conn, period, 1 << 62, None) == []
            for row in await balances.rollforward(conn, period):
                assert row.check_minor == 0
    await assert_reconciled(plane)


async def test_the_floor_is_promotional_memo_only(plane: ControlPlane, clock: ManualClock) -> None:
    wallet = await _wallet(plane)
    now = datetime_of_ns(clock())
    result, _ = await plane.issue_grant(
        GrantRequest(
            wallet_id=wallet,
            amount=100,
            category=Category.PAID,
            consideration_minor=1000,
            currency="USD",
            expires_at=now + dt.timedelta(days=10),
            rollover=RolloverPolicy(
                max_credits=80, min_credits=50, expires_at=now + dt.timedelta(days=40)
            ),
        ),
        tenant=TENANT,
        key="g",
        actor="a",
    )
    source = result.grant_id
    await plane.service.debit(tenant=TENANT, key="d", amount=80, ledger=LEDGER, wallet_id=wallet)
    clock.advance(10 * 86_400)  # 20 left: 20 move (worth 200), the floor adds 30
    await plane.sweep(clock())
    await ProjectionFeed(plane.service.ledger, plane.pool, clock_ns=clock).catch_up()
    await Poster(plane.pool).catch_up()
    rows = await _journals(plane.pool)
    assert _liability(rows, rollover_block_id(source)) == (0, 200)
    assert all(b != rollover_floor_id(source) for _, b, *_ in rows)
    async with plane.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT kind, credits FROM finance_memo WHERE block_id = %s",
            (uuid.UUID(int=rollover_floor_id(source)),),
        )
        assert [(k, int(c)) for k, c in await cursor.fetchall()] == [("granted", 30)]
