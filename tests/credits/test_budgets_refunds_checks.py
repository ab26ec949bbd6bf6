"""Budgets on several ancestors, refunds, voids, and check."""

from __future__ import annotations

import pytest

from grants.errors import BudgetExceeded, IdempotencyConflict, InsufficientCredits, InvalidRequest
from ledger.codes import AccountCode
from ledger.ids import system_account_id
from tests.credits.conftest import AGENT, SUB, TEAM, Period, World

S = 1_000_000_000


def test_budgets_on_several_ancestors_block_with_their_name(world: World) -> None:
    wallet = world.wallet(AGENT)
    world.grant(wallet, 1000)
    team_budget = world.budget(TEAM, 100)
    world.budget(SUB, 500)
    world.budget(AGENT, 300, Period.LIFETIME)
    world.debit(60)
    with pytest.raises(BudgetExceeded) as refused:
        world.debit(50)
    assert refused.value.details["budget_id"] == team_budget.id
    assert refused.value.details["resource_id"] == TEAM
    check = world.check(50)
    assert not check.allowed and check.reason == "budget_exceeded"
    blocking = [b.budget_id for b in check.budgets if b.blocking]
    assert blocking == [team_budget.id]
    assert {b.budget_id: b.headroom for b in check.budgets}[team_budget.id] == 40
    world.debit(40)


@pytest.mark.manual_clock
def test_daily_budget_resets_with_the_period(world: World) -> None:
    wallet = world.wallet(AGENT)
    world.grant(wallet, 1000)
    world.budget(AGENT, 100, Period.DAY)
    world.debit(100)
    with pytest.raises(BudgetExceeded):
        world.debit(1)
    world.clock.advance(24 * 3600)
    world.debit(100)


def test_reservations_count_against_budgets(world: World) -> None:
    wallet = world.wallet(AGENT)
    world.grant(wallet, 1000)
    world.budget(AGENT, 100)
    r = world.reserve(80)
    with pytest.raises(BudgetExceeded):
        world.reserve(30)
    world.settle(r.reservation_id, 50)
    world.reserve(50)  # the unused 30 came back to the budget


def test_refund_restores_in_reverse_burn_order_and_never_more(world: World) -> None:
    wallet = world.wallet(AGENT)
    first = world.grant(wallet, 50, expires_at_ns=world.now() + 10 * S)
    second = world.grant(wallet, 100)
    debit = world.debit(80)
    refund = world.run(
        world.grant_service.refund(debit.operation_id, 40, tenant=7, key=world.k("r1"))
    )
    assert refund.restored == [(second.id, 30), (first.id, 10)]
    assert world.available(second.id) == 100
    assert world.available(first.id) == 10
    again = world.run(
        world.grant_service.refund(debit.operation_id, 40, tenant=7, key=world.k("r1"))
    )
    assert again.replayed and again.restored == refund.restored
    with pytest.raises(IdempotencyConflict):
        world.run(world.grant_service.refund(debit.operation_id, 41, tenant=7, key=world.k("r1")))
    with pytest.raises(InvalidRequest, match="exceeds what the debit took"):
        world.run(world.grant_service.refund(debit.operation_id, 41, tenant=7, key=world.k("r2")))
    world.run(world.grant_service.refund(debit.operation_id, 40, tenant=7, key=world.k("r3")))
    assert world.available(first.id) == 50


def test_void_takes_the_rest_and_later_returns(world: World) -> None:
    wallet = world.wallet(AGENT)
    g = world.grant(wallet, 100)
    r = world.reserve(30)
    voided = world.run(world.grant_service.void(g.id, tenant=7, key=world.k("v")))
    assert voided.amount == 70
    assert world.account(g.id).debits_pending == 30
    with pytest.raises(InsufficientCredits):
        world.debit(1)
    world.release(r.reservation_id)
    swept = world.run(world.grant_service.sweep(world.now())).swept
    assert [(s.amount, s.reason) for s in swept] == [(30, "voided")]
    assert world.available(g.id) == 0


def test_a_refund_into_a_finished_block_is_swept_in_its_own_chain(world: World) -> None:
    """Once the sweep is done with a block (expired or voided, nothing left, nothing held) it
    no longer watches it: credits a usage refund gives back are swept in the refund's chain, to
    breakage (or voided) at the block's expiry, never left available in a dead block."""
    wallet = world.wallet(AGENT)
    expiring = world.grant(wallet, 50, expires_at_ns=world.now() + 10 * S)
    voided = world.grant(wallet, 50)
    debit = world.debit(100)
    world.clock.advance(11)
    world.run(world.grant_service.void(voided.id, tenant=7, key=world.k("v")))
    for _ in range(2):  # the second sweep of nothing finishes both blocks
        world.run(world.grant_service.sweep(world.now()))
    assert expiring.id not in world.grant_service.cache.grants
    refund = world.run(
        world.grant_service.refund(debit.operation_id, 100, tenant=7, key=world.k("r"))
    )
    assert refund.restored == [(voided.id, 50), (expiring.id, 50)]
    for block in (expiring, voided):
        account = world.account(block.id)
        assert account.credits_posted == account.debits_posted  # nothing left available
    for sink in (AccountCode.BREAKAGE, AccountCode.VOIDED):
        # The debit had taken everything: what they hold is what the refund gave back.
        assert world.account(system_account_id(world.ledger_id, sink)).credits_posted == 50
    again = world.run(
        world.grant_service.refund(debit.operation_id, 100, tenant=7, key=world.k("r"))
    )
    assert again.replayed and again.restored == refund.restored


def test_a_refund_into_an_expired_block_not_yet_swept_is_swept_with_it(world: World) -> None:
    wallet = world.wallet(AGENT)
    expiring = world.grant(wallet, 50, expires_at_ns=world.now() + 10 * S)
    debit = world.debit(20)
    world.clock.advance(11)  # expired; no sweep has run: the block still has its 30
    assert expiring.id in world.grant_service.cache.grants
    world.run(world.grant_service.refund(debit.operation_id, 20, tenant=7, key=world.k("r")))
    breakage = world.account(system_account_id(world.ledger_id, AccountCode.BREAKAGE))
    assert breakage.credits_posted == 20  # the 20 given back, at once
    swept = world.run(world.grant_service.sweep(world.now())).swept
    assert [(s.amount, s.reason) for s in swept] == [(30, "expired")]


def test_check_changes_nothing_and_names_the_funding(world: World) -> None:
    wallet = world.wallet(AGENT)
    a = world.grant(wallet, 30, expires_at_ns=world.now() + 10 * S)
    b = world.grant(wallet, 100)
    before = [world.account(a.id), world.account(b.id)]
    check = world.check(50)
    assert check.allowed and check.reason is None
    assert check.available == 130
    assert [(f.account_id, f.amount) for f in check.would_fund] == [(a.id, 30), (b.id, 20)]
    assert not world.check(131).allowed
    assert world.check(131).reason == "insufficient_credits"
    assert [world.account(a.id), world.account(b.id)] == before
