"""Balances per wallet and per grant, and the typed, paginated movements of a wallet."""

from __future__ import annotations

import pytest

from tests.credits.conftest import AGENT, OverdraftMode, World
from wallets.statements import Statements, reservation_status

S = 1_000_000_000


def test_wallet_and_grant_balances_add_up(world: World) -> None:
    wallet = world.wallet(AGENT, overdraft_mode=OverdraftMode.SOFT, overdraft_limit=100)
    now = world.now()
    a = world.grant(wallet, 100, expires_at_ns=now + 10 * S)
    b = world.grant(wallet, 200)
    world.debit(50)
    r = world.reserve(80)  # 50 from a, 30 from b
    debit = world.debit(20)
    world.run(world.grant_service.refund(debit.operation_id, 5, tenant=7, key=world.k("rf")))
    world.settle(r.reservation_id, 60)
    statements = Statements(world.ledger, world.catalog)
    balance = world.run(statements.wallet(wallet.id))
    by_grant = {g.grant_id: g for g in balance.grants}
    assert by_grant[a.id].consumed == 100 and by_grant[a.id].available == 0
    assert by_grant[b.id].consumed == 25  # 10 settled + 20 debited - 5 refunded
    assert by_grant[b.id].available == 175
    assert (balance.available, balance.held, balance.consumed) == (175, 0, 125)
    assert (balance.overdraft_used, balance.overdraft_limit) == (0, 100)
    assert world.run(statements.grant(b.id)) == by_grant[b.id]


def test_entries_are_typed_paginated_and_carry_the_running_balance(world: World) -> None:
    wallet = world.wallet(AGENT)
    world.grant(wallet, 100)
    world.debit(30)
    r = world.reserve(20)
    world.settle(r.reservation_id, 15)
    r2 = world.reserve(10)
    world.release(r2.reservation_id)
    statements = Statements(world.ledger, world.catalog)
    first = world.run(statements.entries(wallet.id, limit=3))
    assert [(e.type, e.amount, e.available_after) for e in first.entries] == [
        ("grant", 100, 100),
        ("debit", -30, 70),
        ("reserve", -20, 50),
    ]
    assert first.next_cursor is not None
    rest = world.run(statements.entries(wallet.id, after=first.next_cursor, limit=10))
    assert [(e.type, e.amount, e.available_after) for e in rest.entries] == [
        ("settle", -15, 55),
        ("reserve", -10, 45),
        ("release", 10, 55),
    ]
    assert rest.next_cursor is None
    assert rest.entries[-1].available_after == world.run(statements.wallet(wallet.id)).available


def test_overdraft_used_is_reported(world: World) -> None:
    wallet = world.wallet(AGENT, overdraft_mode=OverdraftMode.UNBOUNDED)
    world.grant(wallet, 10)
    world.debit(25)
    balance = world.run(Statements(world.ledger, world.catalog).wallet(wallet.id))
    assert (balance.available, balance.overdraft_used, balance.overdraft_limit) == (0, 15, None)


def _status(world: World, reservation_id: int) -> str:
    return str(world.run(reservation_status(world.ledger, reservation_id, world.now())).status)


@pytest.mark.manual_clock
def test_a_reservation_reads_settled_even_when_an_empty_block_comes_first(world: World) -> None:
    """The first source leg in burn order can hold nothing (its block was exhausted): a settle
    voids that leg and posts the next one. The status follows what the settle did."""
    wallet = world.wallet(AGENT)
    world.grant(wallet, 100, priority=0)
    world.debit(100)  # the first block in burn order is empty from now on
    world.grant(wallet, 100, priority=1)
    settled = world.reserve(50).reservation_id
    released = world.reserve(20).reservation_id
    zero = world.reserve(10).reservation_id
    assert {_status(world, r) for r in (settled, released, zero)} == {"held"}
    world.settle(settled, 50)
    world.release(released)
    world.settle(zero, 0)  # settled for nothing: still a settle, every leg voided
    assert _status(world, settled) == "settled"
    assert _status(world, released) == "released"
    assert _status(world, zero) == "settled"
    timed_out = world.reserve(5, timeout_s=5).reservation_id
    world.clock.advance(4)
    assert _status(world, timed_out) == "held"
    world.clock.advance(2)
    assert _status(world, timed_out) == "expired"
