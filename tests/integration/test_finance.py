# ruff: noqa: F811 - the fixtures imported from clocked_fixtures stand again as parameters
"""The poster turns the projection into journals (finance/posting.py), and periods close on
them (finance/periods.py): over the projection's mixed history, on the embedded engine."""

from __future__ import annotations

import datetime as dt

import pytest

from finance import balances, periods
from finance.posting import Poster
from grants.model import Category
from ledger import db
from ledger.clock import ManualClock, datetime_of_ns
from ledger.ids import operation_id
from ledger.repositories import finance as repo
from tests.integration.clocked_fixtures import clock, plane, pool  # noqa: F401
from tests.integration.projection_support import (
    JANUARY_10,
    check_of,
    mixed_history,
)
from wallets.control import ControlPlane, GrantRequest

pytestmark = pytest.mark.anyio


async def _journals(pool: db.Pool) -> list[tuple[object, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT j.kind, j.block_id, j.posting_period, l.account, l.debit_minor, l.credit_minor"
            " FROM finance_journals j JOIN finance_journal_lines l"
            " ON l.journal_id = j.id AND l.posting_period = j.posting_period ORDER BY j.seq, l.line"
        )
        return list(await cursor.fetchall())


async def test_the_mixed_history_posts_balanced_journals_that_tie_to_the_blocks(
    plane: ControlPlane, clock: ManualClock
) -> None:
    history = await mixed_history(plane, clock)
    # 40 of d2 back: 30 to the overdraft it drew last, 10 to the team's paid block.
    await plane.refund(operation_id(7, "d2"), 40, tenant=7, key="rf2", actor="a")
    await history.feed.catch_up()
    poster = Poster(plane.pool, entries_max=3)  # small batches: chains straddle them
    assert await poster.catch_up() > 0
    assert await poster.step() == 0  # caught up: nothing more
    rows = await _journals(plane.pool)
    kinds = {row[0] for row in rows}
    assert {"purchase", "usage", "breakage", "correction"} <= kinds
    by_block: dict[object, int] = {}
    for _kind, block, _, account, debit, credit in rows:
        if account == "2100":
            by_block[block] = by_block.get(block, 0) + int(credit) - int(debit)
    async with plane.pool.connection() as conn:
        # The paid block was drained, the voided one swept: each has posted all its
        # consideration out of the liability (10 per credit); the promotional one never
        # appears in a journal, only in the memo.
        blocks = await repo.blocks(conn, set(history.blocks.values()))
        for name in ("paid", "to-void"):
            block = blocks[history.blocks[name]]
            assert block.credits_out == block.credits
            assert by_block[_uuid(history.blocks[name])] == 0
        assert _uuid(history.blocks["promo"]) not in by_block
        cursor = await conn.execute(
            "SELECT kind, credits FROM finance_memo WHERE block_id = %s ORDER BY seq",
            (_uuid(history.blocks["promo"]),),
        )
        memo = await cursor.fetchall()
        assert memo[0] == ("granted", 100) and ("expired", memo[-1][1]) == memo[-1]
        state = await repo.read_state(conn)
        closed = [p.period_start for p in await repo.periods(conn)]
        for period in await repo.active_periods(conn):
            assert await repo.unbalanced_journals(conn, period) == 0
            assert (
                await repo.block_differences(
                    conn, period, state.watermark_ts, _base(closed, period)
                )
                == []
            )
            for row in await balances.rollforward(conn, period):
                assert row.check_minor == 0
    # The subledger is append-only: the database refuses to change or remove what was posted.
    for statement in (
        "UPDATE finance_journals SET reason = 'edited'",
        "DELETE FROM finance_journals",
        "UPDATE finance_journal_lines SET debit_minor = debit_minor + 1",
        "DELETE FROM finance_journal_lines",
        "TRUNCATE finance_journal_lines",
        "DELETE FROM finance_memo",
    ):
        async with plane.pool.connection() as conn:
            with pytest.raises(Exception, match="append-only"):
                await conn.execute(statement)
    total = sum(int(r[5]) - int(r[4]) for r in rows if r[3] in ("4000", "4050"))
    # Revenue is what the drained and voided blocks were paid, plus what the others earned.
    assert total > 0


async def test_a_month_closes_once_its_checks_pass_and_late_entries_adjust_the_next(
    plane: ControlPlane, clock: ManualClock
) -> None:
    start = JANUARY_10
    history = await mixed_history(plane, clock)
    poster = Poster(plane.pool)
    january = dt.date(2025, 1, 1)
    checker = check_of(plane)

    async def reconciled() -> bool:
        return (await checker.run_to_watermark()).clean

    async def close() -> periods.PeriodView:
        return await periods.close_period(
            plane.pool,
            january,
            actor="controller",
            clock_ns=clock,
            poster=poster,
            check_projection=reconciled,
        )

    with pytest.raises(periods.PeriodCloseRefused, match="period_ended"):
        await close()
    clock.advance_ns(int((dt.datetime(2025, 2, 1, tzinfo=dt.UTC) - start).total_seconds()) * 10**9)
    # The feed has not seen the clock pass the month's end: refused, naming the check.
    with pytest.raises(periods.PeriodCloseRefused) as refused:
        await close()
    assert refused.value.check in ("projection_complete", "expiry_swept")
    await plane.sweep(clock())
    await history.feed.catch_up()
    await history.feed.step()
    closed = await close()
    assert closed.state == "closed" and closed.checks and closed.checks["rollforward_zero"]
    assert (await close()).closed_at == closed.closed_at  # closing again answers the row
    async with plane.pool.connection() as conn:
        with pytest.raises(Exception, match=r"append-only|only goes closed"):
            await conn.execute("DELETE FROM finance_periods")
    before = await _journals(plane.pool)
    # A usage refund dated now (February) of January's debit: booked in February, flagged as
    # an adjustment of January; January's rows do not change.
    await plane.refund(operation_id(7, "d2"), 40, tenant=7, key="late", actor="a")
    await history.feed.catch_up()
    await poster.catch_up()
    after = await _journals(plane.pool)
    assert [r for r in after if r[2] == january] == [r for r in before if r[2] == january]
    async with plane.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT posting_period, adjusts_period FROM finance_journals WHERE kind = 'correction'"
            " AND posting_period > %s",
            (january,),
        )
        assert await cursor.fetchall() == [(dt.date(2025, 2, 1), january)]
    locked = await periods.lock_period(plane.pool, january, actor="controller", clock_ns=clock)
    assert locked.state == "locked"
    assert datetime_of_ns(clock()) >= dt.datetime(2025, 2, 1, tzinfo=dt.UTC)


def _uuid(value: int) -> object:
    import uuid

    return uuid.UUID(int=value)


def _base(closed: list[dt.date], period: dt.date) -> dt.date | None:
    """The last closed month before `period`."""
    return max((p for p in closed if p < period), default=None)


async def test_a_void_counts_when_it_happened_not_at_the_blocks_expiry(
    plane: ControlPlane, clock: ManualClock
) -> None:
    """A void's transfer carries the block's expiry (for the readers of the ledger): finance
    books its breakage in the month of the void."""
    history = await mixed_history(plane, clock)
    wallet = history.agent_wallet
    far = datetime_of_ns(clock()) + dt.timedelta(days=400)
    result, _ = await plane.issue_grant(
        GrantRequest(
            wallet_id=wallet.id,
            amount=100,
            category=Category.PAID,
            consideration_minor=5000,
            currency="USD",
            expires_at=far,
        ),
        tenant=7,
        key="far",
        actor="a",
    )
    await plane.void_grant(result.grant_id, tenant=7, key="void-far", actor="a", reason="mistake")
    await history.feed.catch_up()
    await Poster(plane.pool).catch_up()
    async with plane.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT posting_period, actor, reason FROM finance_journals"
            " WHERE block_id = %s AND kind = 'breakage'",
            (_uuid(result.grant_id),),
        )
        assert await cursor.fetchall() == [(dt.date(2025, 1, 1), "a", "mistake")]
