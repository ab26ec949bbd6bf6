"""Balances per wallet and per grant, and the typed, paginated movements of a wallet."""

from __future__ import annotations

import pytest

from tests.credits.conftest import AGENT, OverdraftMode, World
from wallets.statements import Entry, reservation_status

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
    statements = world.statements
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
    statements = world.statements
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
    times = [e.at_ns for e in first.entries + rest.entries]
    assert times == sorted(times) and len(set(times)) == len(times)
    only = world.run(statements.entries(wallet.id, types={"reserve", "release"}))
    assert [(e.type, e.available_after) for e in only.entries] == [
        ("reserve", 50),
        ("reserve", 45),
        ("release", 55),
    ]


def test_overdraft_used_is_reported(world: World) -> None:
    wallet = world.wallet(AGENT, overdraft_mode=OverdraftMode.UNBOUNDED)
    world.grant(wallet, 10)
    world.debit(25)
    balance = world.run(world.statements.wallet(wallet.id))
    assert (balance.available, balance.overdraft_used, balance.overdraft_limit) == (0, 15, None)
    assert balance.consumed == 25  # what the overdraft paid was consumed too


def _entries(world: World, wallet_id: int) -> list[Entry]:
    return list(world.run(world.statements.entries(wallet_id, limit=1000)).entries)


def _summary(world: World, wallet_id: int) -> tuple[int, int, int, int, int, int]:
    b = world.run(world.statements.wallet(wallet_id))
    return b.available, b.held, b.upcoming, b.consumed, b.expired, b.voided


def _last(world: World, wallet_id: int) -> tuple[int, int, int]:
    e = _entries(world, wallet_id)[-1]
    return e.available_after, e.held_after, e.overdraft_used_after


@pytest.mark.manual_clock
def test_a_grant_effective_tomorrow_is_upcoming_until_then(world: World) -> None:
    wallet = world.wallet(AGENT)
    grant = world.grant(wallet, 100, effective_at_ns=world.now() + 86_400 * S)
    assert _summary(world, wallet.id) == (0, 0, 100, 0, 0, 0)
    g = world.run(world.statements.grant(grant.id))
    assert (g.state, g.available, g.upcoming) == ("upcoming", 0, 100)
    assert not world.check(1).allowed and world.check(1).available == 0
    assert [(e.type, e.amount, e.available_after) for e in _entries(world, wallet.id)] == [
        ("grant", 100, 0)
    ]
    world.clock.advance(86_400)
    assert _summary(world, wallet.id) == (100, 0, 0, 0, 0, 0)
    assert world.check(100).allowed
    entries = _entries(world, wallet.id)
    assert [(e.type, e.amount, e.available_after) for e in entries] == [
        ("grant", 100, 0),
        ("effective", 100, 100),
    ]
    assert entries[-1].at_ns == grant.effective_at_ns


@pytest.mark.manual_clock
def test_an_expired_block_is_out_of_available_before_the_sweep(world: World) -> None:
    wallet = world.wallet(AGENT)
    grant = world.grant(wallet, 100, expires_at_ns=world.now() + 10 * S)
    world.debit(30)
    world.clock.advance(10)
    assert not world.check(1).allowed  # the spend path skips it from expires_at on
    assert _summary(world, wallet.id) == (0, 0, 0, 30, 70, 0)
    g = world.run(world.statements.grant(grant.id))
    assert (g.state, g.available, g.expired) == ("expired", 0, 70)
    expected = [("grant", 100, 100), ("debit", -30, 70), ("expire", -70, 0)]
    assert [(e.type, e.amount, e.available_after) for e in _entries(world, wallet.id)] == expected
    assert _entries(world, wallet.id)[-1].at_ns == grant.expires_at_ns
    world.run(world.grant_service.sweep(world.now()))
    # The sweep moves nothing a read had not already counted out.
    assert _summary(world, wallet.id) == (0, 0, 0, 30, 70, 0)
    assert [(e.type, e.amount, e.available_after) for e in _entries(world, wallet.id)] == expected


def test_a_block_issued_already_expired_expires_in_the_entries_too(world: World) -> None:
    """Backdated past its expiry: the entries say where its credits went (found by hand: the
    grant's +7 stood alone, and the summary's expired 7 came from nowhere)."""
    wallet = world.wallet(AGENT)
    world.grant(wallet, 100)
    now = world.now()
    world.grant(wallet, 7, effective_at_ns=now - 100 * S, expires_at_ns=now - 50 * S)
    expected = [("grant", 100, 100), ("grant", 7, 100), ("expire", -7, 100)]
    assert [(e.type, e.amount, e.available_after) for e in _entries(world, wallet.id)] == expected
    assert _summary(world, wallet.id)[:1] == (100,)
    world.run(world.grant_service.sweep(world.now()))  # the sweep moves the 7: no new entry
    assert [(e.type, e.amount, e.available_after) for e in _entries(world, wallet.id)] == expected
    assert world.run(world.statements.wallet(wallet.id)).expired == 7


def test_what_comes_back_to_a_voided_block_is_voided_at_once(world: World) -> None:
    wallet = world.wallet(AGENT)
    grant = world.grant(wallet, 100)
    r = world.reserve(40)
    world.run(world.grant_service.void(grant.id, tenant=7, key=world.key()))
    world.release(r.reservation_id)
    assert not world.check(1).allowed  # the spend path never draws on a voided block
    assert _summary(world, wallet.id) == (0, 0, 0, 0, 0, 100)
    assert [
        (e.type, e.amount, e.available_after, e.held_after) for e in _entries(world, wallet.id)
    ] == [
        ("grant", 100, 100, 0),
        ("reserve", -40, 60, 40),
        ("void", -60, 0, 40),
        ("release", 40, 0, 0),
    ]
    world.run(world.grant_service.sweep(world.now()))
    assert _summary(world, wallet.id) == (0, 0, 0, 0, 0, 100)
    assert len(_entries(world, wallet.id)) == 4


def test_overdraft_draws_and_repays_are_entries_and_consumed(world: World) -> None:
    wallet = world.wallet(AGENT, overdraft_mode=OverdraftMode.SOFT, overdraft_limit=100)
    world.grant(wallet, 10)
    world.debit(25)
    b = world.run(world.statements.wallet(wallet.id))
    assert (b.available, b.consumed, b.overdraft_used, b.overdraft_limit) == (0, 25, 15, 100)
    assert world.check(1).available == 100 - 15
    world.grant(wallet, 100)  # repays the 15 first
    r = world.reserve(90)  # 85 from the block, 5 from the overdraft
    b = world.run(world.statements.wallet(wallet.id))
    assert (b.available, b.held, b.consumed, b.overdraft_used, b.overdraft_held) == (
        0, 85, 25, 5, 5
    )  # fmt: skip
    world.settle(r.reservation_id, 88)
    rows = [
        (e.type, e.account_kind, e.amount, e.available_after, e.held_after, e.overdraft_used_after)
        for e in _entries(world, wallet.id)
    ]
    assert rows == [
        ("overdraft_limit", "overdraft", 100, 0, 0, 0),
        ("grant", "grant", 10, 10, 0, 0),
        ("debit", "grant", -10, 0, 0, 0),
        ("overdraft_draw", "overdraft", -15, 0, 0, 15),
        ("grant", "grant", 100, 100, 0, 15),
        ("overdraft_repay", "grant", -15, 85, 0, 0),
        ("reserve", "grant", -85, 0, 85, 0),
        ("overdraft_draw", "overdraft", -5, 0, 85, 5),
        ("settle", "grant", -85, 0, 0, 5),
        ("settle", "overdraft", -3, 0, 0, 3),
    ]
    b = world.run(world.statements.wallet(wallet.id))
    assert (b.consumed, b.overdraft_used, b.overdraft_held) == (25 + 88, 3, 0)
    assert _last(world, wallet.id) == (b.available, b.held, b.overdraft_used)


@pytest.mark.manual_clock
def test_a_timed_out_reservation_is_an_entry_at_its_timeout(world: World) -> None:
    wallet = world.wallet(AGENT)
    world.grant(wallet, 100)
    r = world.reserve(30, timeout_s=5)
    world.debit(10)
    world.clock.advance(6)
    entries = _entries(world, wallet.id)
    assert [(e.type, e.amount, e.available_after, e.held_after) for e in entries] == [
        ("grant", 100, 100, 0),
        ("reserve", -30, 70, 30),
        ("debit", -10, 60, 30),
        ("reservation_expired", 30, 90, 0),
    ]
    assert entries[-1].operation_id == r.reservation_id
    assert entries[-1].at_ns == entries[1].at_ns + 5 * S
    assert _last(world, wallet.id) == (90, 0, 0)
    assert _summary(world, wallet.id)[:2] == (90, 0)


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


@pytest.mark.manual_clock
def test_a_refund_into_a_finished_block_reads_expired(world: World) -> None:
    """A block used up before its expiry is finished by the sweep (it leaves the catalog). A
    refund can still give credits back to it; the spend path never draws on them again."""
    wallet = world.wallet(AGENT)
    grant = world.grant(wallet, 100, expires_at_ns=world.now() + 10 * S)
    debit = world.debit(100)
    world.clock.advance(10)
    report = world.run(world.grant_service.sweep(world.now()))
    assert report.finished == [grant.id] and report.swept == []
    world.run(world.grant_service.refund(debit.operation_id, 30, tenant=7, key=world.key()))
    assert not world.check(1).allowed
    g = world.run(world.statements.grant(grant.id))
    assert (g.state, g.available, g.expired, g.consumed) == ("expired", 0, 30, 70)
    assert _summary(world, wallet.id) == (0, 0, 0, 70, 30, 0)
    assert [(e.type, e.amount, e.available_after) for e in _entries(world, wallet.id)] == [
        ("grant", 100, 100),
        ("debit", -100, 0),
        ("refund", 30, 0),
    ]
