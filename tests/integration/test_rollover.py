# ruff: noqa: F811 - the fixtures imported from clocked_fixtures stand again as parameters
"""Rollover of a credit block at its expiry (ledger/README.md "Rollover"): the arithmetic with
min and max, nothing that rolls over is swept to breakage, a crash between the rows and the
ledger finished once by the next sweep, two sweeps at once, a reservation held across expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import pytest

from grants.errors import InvalidRolloverPolicy
from grants.model import Category, RolloverPolicy
from grants.service import SweepReport, rollover_transfer_id
from ledger.clock import ManualClock, datetime_of_ns
from ledger.codes import AccountCode, TransferCode
from ledger.ids import system_account_id
from ledger.repositories import grants as grant_rows
from ledger.repositories.grants import GrantState, RolloverState
from ledger.repositories.resources import ResourceKind
from tests.integration.clocked_fixtures import clock, plane, pool  # noqa: F401
from tests.integration.projection_support import (
    assert_reconciled,
)
from wallets.catalog import Catalog, Wallet
from wallets.control import ControlPlane, GrantRequest, rollover_block_id, rollover_floor_id
from wallets.projection import ProjectionFeed
from wallets.service import CreditService

pytestmark = pytest.mark.anyio
TENANT = 7
LEDGER = 410


async def wallet_of(plane: ControlPlane) -> Wallet:
    await plane.create_credit_type(
        ledger=LEDGER, code="ro", name="R", asset_scale=0, actor="a", tenant=0, key="ct"
    )
    customer, _ = await plane.create_customer(name="C", actor="a", tenant=0, key="cu")
    resource, _ = await plane.create_resource(
        customer_id=customer.id, kind=ResourceKind.AGENT, actor="a", tenant=0, key="re"
    )
    wallet, _ = await plane.create_wallet(
        resource_id=resource.id, ledger=LEDGER, actor="a", tenant=0, key="wa"
    )
    return wallet


def now_of(clock: ManualClock) -> dt.datetime:
    return datetime_of_ns(clock())


async def issue(
    plane: ControlPlane,
    clock: ManualClock,
    wallet: Wallet,
    key: str,
    amount: int,
    *,
    max_credits: int,
    min_credits: int = 0,
    **kw: Any,
) -> int:
    now = now_of(clock)
    request = GrantRequest(
        wallet_id=wallet.id,
        amount=amount,
        category=kw.pop("category", Category.PAID),
        consideration_minor=kw.pop("consideration_minor", amount * 10),
        currency=kw.pop("currency", "USD"),
        expires_at=now + dt.timedelta(days=1),
        rollover=RolloverPolicy(
            max_credits=max_credits,
            min_credits=min_credits,
            expires_at=now + dt.timedelta(days=31),
        ),
        **kw,
    )
    result, _ = await plane.issue_grant(request, tenant=TENANT, key=key, actor="a")
    return result.grant_id


async def spend(plane: ControlPlane, wallet: Wallet, key: str, amount: int) -> None:
    await plane.service.debit(
        tenant=TENANT, key=key, amount=amount, ledger=LEDGER, wallet_id=wallet.id
    )


async def balance(plane: ControlPlane, account_id: int) -> tuple[int, int, int]:
    (a,) = await plane.service.ledger.lookup_accounts([account_id])
    return a.credits_posted, a.debits_posted, a.debits_pending


async def breakage(plane: ControlPlane) -> int:
    (a,) = await plane.service.ledger.lookup_accounts(
        [system_account_id(LEDGER, AccountCode.BREAKAGE)]
    )
    return a.credits_posted - a.debits_posted


@pytest.mark.parametrize(
    ("used", "max_credits", "min_credits", "taken", "floor", "expired"),
    [
        (90, 50, 20, 10, 10, 0),  # 10 left, below the floor of 20: 10 move, 10 added
        (70, 50, 20, 30, 0, 0),  # 30 left, between min and max: all of it moves
        (20, 50, 20, 50, 0, 30),  # 80 left, above the max: 50 move, 30 expire
        (100, 50, 0, 0, 0, 0),  # nothing left, no floor: no new block
        (100, 50, 5, 0, 5, 0),  # nothing left, a floor: only the floor's block
    ],
)
async def test_rollover_arithmetic(
    plane: ControlPlane,
    clock: ManualClock,
    used: int,
    max_credits: int,
    min_credits: int,
    taken: int,
    floor: int,
    expired: int,
) -> None:
    wallet = await wallet_of(plane)
    source = await issue(
        plane, clock, wallet, "g", 100, max_credits=max_credits, min_credits=min_credits
    )
    await spend(plane, wallet, "d", used)
    clock.advance(86_400)
    report = await plane.sweep(clock())
    (rolled,) = report.rolled_over
    assert (rolled.source_id, rolled.taken, rolled.floor) == (source, taken, floor)
    assert await breakage(plane) == expired
    again = await plane.sweep(clock())  # a second pass moves nothing (it may finish blocks)
    assert (again.rolled_over, again.swept) == ([], [])
    assert await plane.sweep(clock()) == SweepReport([], [], [])
    async with plane.pool.connection() as conn:
        row = await grant_rows.get_grant(conn, source)
        blocks = {b.id: b for b in await grant_rows.rollover_blocks(conn, source)}
    assert row is not None and row.rollover is not None
    assert row.rollover.state is RolloverState.DONE
    assert row.state is GrantState.EXPIRED
    assert await balance(plane, source) == (100, 100, 0)
    if taken:
        block = blocks[rollover_block_id(source)]
        assert (block.amount, block.category, block.source_grant_id) == (
            taken,
            Category.PAID,
            source,
        )
        assert block.state is GrantState.ACTIVE and block.expires_at == row.rollover.expires_at
        assert block.effective_at == row.expires_at
        assert block.consideration_minor == taken * 10  # 10 a credit, kept
        assert await balance(plane, block.id) == (taken, 0, 0)
    if floor:
        block = blocks[rollover_floor_id(source)]
        assert (block.amount, block.category, block.consideration_minor) == (
            floor,
            Category.PROMOTIONAL,
            0,
        )
        assert await balance(plane, block.id) == (floor, 0, 0)
    assert len(blocks) == (taken > 0) + (floor > 0)
    # The new credits are spendable (and the source's are not).
    if taken + floor:
        await spend(plane, wallet, "after", taken + floor)


async def test_a_crash_between_the_rows_and_the_ledger_is_finished_once(
    plane: ControlPlane, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    wallet = await wallet_of(plane)
    source = await issue(plane, clock, wallet, "g", 100, max_credits=60, min_credits=0)
    await spend(plane, wallet, "d", 30)
    clock.advance(86_400)

    async def crash(*args: Any, **kw: Any) -> bool:
        raise RuntimeError("crash before the ledger")

    monkeypatch.setattr(plane, "_roll_over_ledger", crash)
    report = await plane.sweep(clock())  # the rollover fails; the sweep leaves the block alone
    assert report.rolled_over == [] and report.swept == []
    assert await balance(plane, source) == (100, 30, 0)
    async with plane.pool.connection() as conn:
        (pending,) = await grant_rows.rollover_blocks(conn, source)
        row = await grant_rows.get_grant(conn, source)
    assert pending.state is GrantState.PENDING and pending.amount == 60
    assert row is not None and row.rollover is not None
    assert row.rollover.state is RolloverState.PENDING
    # Reconciliation does not issue the pending rollover block from the issuer.
    await plane.reconcile()
    assert await balance(plane, source) == (100, 30, 0)
    monkeypatch.undo()
    # The next sweep finishes it, with the amount fixed before the crash.
    report = await plane.sweep(clock())
    (rolled,) = report.rolled_over
    assert rolled.taken == 60
    assert await balance(plane, pending.id) == (60, 0, 0)
    assert await balance(plane, source) == (100, 100, 0)
    assert await breakage(plane) == 10
    await plane.sweep(clock())
    assert await balance(plane, pending.id) == (60, 0, 0)
    assert await breakage(plane) == 10


async def test_a_crash_after_the_ledger_is_finished_once(
    plane: ControlPlane, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    wallet = await wallet_of(plane)
    source = await issue(plane, clock, wallet, "g", 100, max_credits=60)
    clock.advance(86_400)
    real = plane._roll_over_ledger

    async def crash_after(*args: Any, **kw: Any) -> bool:
        await real(*args, **kw)
        raise RuntimeError("crash after the ledger")

    monkeypatch.setattr(plane, "_roll_over_ledger", crash_after)
    await plane.sweep(clock())
    monkeypatch.undo()
    assert await balance(plane, rollover_block_id(source)) == (60, 0, 0)
    await plane.sweep(clock())
    assert await balance(plane, rollover_block_id(source)) == (60, 0, 0)
    assert await balance(plane, source) == (100, 100, 0)
    assert await breakage(plane) == 40
    async with plane.pool.connection() as conn:
        (block,) = await grant_rows.rollover_blocks(conn, source)
    assert block.state is GrantState.ACTIVE


async def test_two_sweeps_at_once_do_not_double(plane: ControlPlane, clock: ManualClock) -> None:
    wallet = await wallet_of(plane)
    sources = [
        await issue(plane, clock, wallet, f"g{i}", 100, max_credits=50, min_credits=20)
        for i in range(4)
    ]
    await spend(plane, wallet, "d", 100 + 60)  # left: 0, 40, 100, 100 (in burn order)
    clock.advance(86_400)
    # Another process: its own cache and grant service, the same engine and database.
    other = ControlPlane(plane.pool, CreditService(plane.service.ledger, Catalog(), clock_ns=clock))
    await other.load()
    await asyncio.gather(*(p.sweep(clock()) for p in (plane, other, plane, other)))
    await plane.sweep(clock())
    await other.sweep(clock())
    taken = floor = 0
    async with plane.pool.connection() as conn:
        for source in sources:
            blocks = await grant_rows.rollover_blocks(conn, source)
            assert all(b.state is GrantState.ACTIVE for b in blocks)
            for b in blocks:
                assert await balance(plane, b.id) == (b.amount, 0, 0)
                if b.id == rollover_block_id(source):
                    taken += b.amount
                else:
                    floor += b.amount
            assert await balance(plane, source) == (100, 100, 0)
    # 0 left: a floor of 20; 40: all of it; 100 (twice): 50 each, 50 expire.
    assert (taken, floor) == (40 + 50 + 50, 20)
    assert await breakage(plane) == 240 - 140


async def test_a_reservation_held_across_expiry_is_swept_not_rolled(
    plane: ControlPlane, clock: ManualClock
) -> None:
    wallet = await wallet_of(plane)
    source = await issue(plane, clock, wallet, "g", 100, max_credits=100)
    clock.advance(3600)
    held = await plane.service.reserve(
        tenant=TENANT, key="r", amount=30, ledger=LEDGER, wallet_id=wallet.id, timeout_s=86_400
    )
    clock.advance(86_400 - 3600)
    report = await plane.sweep(clock())
    (rolled,) = report.rolled_over
    assert rolled.taken == 70  # the held 30 stay held
    assert await balance(plane, source) == (100, 70, 30)
    await plane.service.release(tenant=TENANT, key="x", reservation_id=held.reservation_id)
    await plane.sweep(clock())
    assert await breakage(plane) == 30  # what came back is swept, not rolled
    assert await balance(plane, rollover_block_id(source)) == (70, 0, 0)
    await plane.sweep(clock())  # nothing left, nothing held: done with it
    async with plane.pool.connection() as conn:
        row = await grant_rows.get_grant(conn, source)
    assert row is not None and row.state is GrantState.EXPIRED


async def test_bad_policies_are_refused(plane: ControlPlane, clock: ManualClock) -> None:
    wallet = await wallet_of(plane)
    now = now_of(clock)
    day = dt.timedelta(days=1)
    cases = [
        (now + day, RolloverPolicy(max_credits=5, min_credits=10, expires_at=now + 2 * day)),
        (now + day, RolloverPolicy(max_credits=-1, expires_at=now + 2 * day)),
        (now + day, RolloverPolicy(max_credits=5, min_credits=-1, expires_at=now + 2 * day)),
        (now + day, RolloverPolicy(max_credits=5, expires_at=now + day)),
        (None, RolloverPolicy(max_credits=5, expires_at=now + 2 * day)),
    ]
    for i, (expires_at, policy) in enumerate(cases):
        with pytest.raises(InvalidRolloverPolicy):
            await plane.issue_grant(
                GrantRequest(
                    wallet_id=wallet.id,
                    amount=10,
                    category=Category.PROMOTIONAL,
                    expires_at=expires_at,
                    rollover=policy,
                ),
                tenant=TENANT,
                key=f"bad{i}",
                actor="a",
            )


async def test_a_voided_block_does_not_roll_over(plane: ControlPlane, clock: ManualClock) -> None:
    wallet = await wallet_of(plane)
    source = await issue(plane, clock, wallet, "g", 100, max_credits=50, min_credits=20)
    await plane.void_grant(source, tenant=TENANT, key="v", actor="a")
    clock.advance(86_400)
    report = await plane.sweep(clock())
    assert [r.taken + r.floor for r in report.rolled_over] == [0]
    async with plane.pool.connection() as conn:
        assert await grant_rows.rollover_blocks(conn, source) == []


async def test_the_rollover_transfer_names_its_source(
    plane: ControlPlane, clock: ManualClock
) -> None:
    wallet = await wallet_of(plane)
    source = await issue(plane, clock, wallet, "g", 100, max_credits=50)
    clock.advance(86_400)
    await plane.sweep(clock())
    (t,) = await plane.service.ledger.lookup_transfers(
        [rollover_transfer_id(rollover_block_id(source))]
    )
    assert t.code == TransferCode.ROLLOVER
    assert (t.debit_account_id, t.credit_account_id, t.amount, t.user_data_128) == (
        source,
        rollover_block_id(source),
        50,
        source,
    )


async def test_the_projection_has_the_rollover_on_both_blocks_and_reconciles(
    plane: ControlPlane, clock: ManualClock
) -> None:
    wallet = await wallet_of(plane)
    source = await issue(plane, clock, wallet, "g", 100, max_credits=50, min_credits=0)
    floored = await issue(plane, clock, wallet, "f", 10, max_credits=30, min_credits=25)
    await spend(plane, wallet, "d", 10)  # burn order: from one of them
    clock.advance(3600)
    held = await plane.service.reserve(
        tenant=TENANT, key="r", amount=5, ledger=LEDGER, wallet_id=wallet.id, timeout_s=86_400
    )
    clock.advance(86_400 - 3600)
    await plane.sweep(clock())
    await plane.service.release(tenant=TENANT, key="x", reservation_id=held.reservation_id)
    await plane.sweep(clock())
    await spend(plane, wallet, "after", 7)
    feed = ProjectionFeed(plane.service.ledger, plane.pool, clock_ns=clock)
    await feed.catch_up()
    async with plane.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT account_id, amount, code, operation_id FROM ledger_entries"
            " WHERE kind = 'rollover' ORDER BY amount"
        )
        entries = [
            (uuid.UUID(str(a)).int, int(n), c, uuid.UUID(str(o)).int)
            for a, n, c, o in await cursor.fetchall()
        ]
        usage = await conn.execute(
            "SELECT coalesce(sum(credits), 0) FROM usage_rollups WHERE grain = 'day'"
        )
        (used,) = await usage.fetchone() or (0,)
    carried = {e[0]: e[1] for e in entries}
    for src in (source, floored):
        taken = -carried.get(src, 0)
        if taken:
            assert carried[rollover_block_id(src)] == taken
    assert all(e[2] == TransferCode.ROLLOVER for e in entries)
    assert {e[3] for e in entries} <= {source, floored}
    assert int(used) == 10 + 7  # the rollover is no usage
    await assert_reconciled(plane)


async def test_one_sweep_rolls_over_a_bounded_number_and_leaves_the_rest_unswept(
    plane: ControlPlane, clock: ManualClock
) -> None:
    wallet = await wallet_of(plane)
    sources = [await issue(plane, clock, wallet, f"g{i}", 10, max_credits=4) for i in range(3)]
    clock.advance(86_400)
    plane.rollover_batch = 2
    report = await plane.sweep(clock())
    assert len(report.rolled_over) == 2
    waiting = [s for s in sources if s not in {r.source_id for r in report.rolled_over}]
    assert len(waiting) == 1
    assert await balance(plane, waiting[0]) == (10, 0, 0)  # not swept while its rollover waits
    assert await breakage(plane) == 2 * 6
    report = await plane.sweep(clock())
    assert [r.source_id for r in report.rolled_over] == waiting
    assert await breakage(plane) == 3 * 6
    assert (await plane.sweep(clock())).rolled_over == []


async def test_an_advance_of_the_test_clock_rolls_over_and_sweeps_every_due_block(
    plane: ControlPlane, clock: ManualClock
) -> None:
    """advance_to (a test clock's advance) is done when it returns, however many rollovers
    are due: not one batch of them, the rest left unrolled and unswept."""
    wallet = await wallet_of(plane)
    sources = [await issue(plane, clock, wallet, f"g{i}", 10, max_credits=4) for i in range(5)]
    clock.advance(86_400)
    plane.rollover_batch = 2
    report = await plane.advance_to(clock())
    assert sorted(r.source_id for r in report.rolled_over) == sorted(sources)
    for source in sources:
        assert await balance(plane, source) == (10, 10, 0)
    assert await breakage(plane) == 5 * 6


async def _crash_before_the_ledger(
    plane: ControlPlane, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep that decides the rollovers due (their rows 'pending', amounts fixed) and stops
    before the ledger."""

    async def crash(*args: Any, **kw: Any) -> bool:
        raise RuntimeError("crash before the ledger")

    monkeypatch.setattr(plane, "_roll_over_ledger", crash)
    await plane.sweep(clock())  # a block's failure is logged; the pass goes on
    monkeypatch.undo()


async def test_a_source_voided_between_the_rows_and_the_ledger_rolls_nothing(
    plane: ControlPlane, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    wallet = await wallet_of(plane)
    source = await issue(plane, clock, wallet, "g", 100, max_credits=60)
    clock.advance(86_400)
    await _crash_before_the_ledger(plane, clock, monkeypatch)
    await plane.void_grant(source, tenant=TENANT, key="v", actor="a")
    report = await plane.sweep(clock())
    # The engine refused the fixed amounts; decided again, a voided block rolls nothing.
    (rolled,) = report.rolled_over
    assert not rolled.refused and (rolled.taken, rolled.floor) == (0, 0)
    async with plane.pool.connection() as conn:
        (block,) = await grant_rows.rollover_blocks(conn, source)
        row = await grant_rows.get_grant(conn, source)
    assert block.state is GrantState.ABANDONED
    assert row is not None and row.rollover is not None
    assert row.rollover.state is RolloverState.DONE and row.rollover.attempt == 1
    assert await balance(plane, source) == (100, 100, 0)  # all of it voided
    assert await balance(plane, block.id) == (0, 0, 0)
    assert (await plane.sweep(clock())).rolled_over == []


async def test_a_late_spend_between_the_decision_and_the_ledger_is_decided_again(
    plane: ControlPlane, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spend dated before the block's expiry reaches the engine after the rollover's amounts
    were fixed: the engine refuses the fixed transfer (and its id for good), and the rollover is
    decided again from what is left, with blocks and transfer ids of its own."""
    wallet = await wallet_of(plane)
    source = await issue(plane, clock, wallet, "g", 100, max_credits=80)
    expiry_ns = clock() + 86_400 * 1_000_000_000
    clock.advance(86_400 + 60)
    await _crash_before_the_ledger(plane, clock, monkeypatch)
    async with plane.pool.connection() as conn:
        (fixed,) = await grant_rows.rollover_blocks(conn, source)
    assert (fixed.id, fixed.amount) == (rollover_block_id(source), 80)
    await plane.service.debit(
        tenant=TENANT,
        key="late",
        amount=30,
        ledger=LEDGER,
        wallet_id=wallet.id,
        occurred_at_ns=expiry_ns - 1_000_000_000,
    )
    report = await plane.sweep(clock())
    (rolled,) = report.rolled_over
    assert not rolled.refused and (rolled.remaining, rolled.taken) == (70, 70)
    assert rolled.carried_id == rollover_block_id(source, 1)
    async with plane.pool.connection() as conn:
        blocks = {b.id: b for b in await grant_rows.rollover_blocks(conn, source)}
        row = await grant_rows.get_grant(conn, source)
    assert blocks[fixed.id].state is GrantState.ABANDONED
    assert blocks[rollover_block_id(source, 1)].state is GrantState.ACTIVE
    assert blocks[rollover_block_id(source, 1)].amount == 70
    assert row is not None and row.rollover is not None
    assert (row.rollover.state, row.rollover.attempt) == (RolloverState.DONE, 1)
    assert await balance(plane, rollover_block_id(source, 1)) == (70, 0, 0)
    assert await balance(plane, source) == (100, 100, 0)  # 30 spent, 70 rolled, none expired
    assert await breakage(plane) == 0
    # The abandoned attempt's block (an account with nothing on it) is the catalog's too.
    await ProjectionFeed(plane.service.ledger, plane.pool, clock_ns=clock).catch_up()
    await assert_reconciled(plane)


@pytest.mark.parametrize("days", [None, 31, 40])
async def test_an_expiry_change_past_the_rollover_is_refused_not_a_500(
    plane: ControlPlane, clock: ManualClock, days: int | None
) -> None:
    """A block with a rollover policy keeps an expiry before its rollover's expires_at (the
    schema's check): a change to none, or to at or after it, is a 422, not a database error."""
    wallet = await wallet_of(plane)
    source = await issue(plane, clock, wallet, "g", 100, max_credits=50)
    new = None if days is None else now_of(clock) + dt.timedelta(days=days)
    with pytest.raises(InvalidRolloverPolicy):
        await plane.change_grant_expiry(source, expires_at=new, tenant=TENANT, key="x", actor="a")
    async with plane.pool.connection() as conn:
        row = await grant_rows.get_grant(conn, source)
    assert row is not None and row.expires_at == now_of(clock) + dt.timedelta(days=1)
    # A change within it still goes through.
    later = now_of(clock) + dt.timedelta(days=2)
    result, _ = await plane.change_grant_expiry(
        source, expires_at=later, tenant=TENANT, key="y", actor="a"
    )
    assert result.expires_at == later
