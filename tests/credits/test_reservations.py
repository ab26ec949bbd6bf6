"""Reserve, settle (partial, over, late), release; expiry while reserved."""

from __future__ import annotations

import pytest

from grants.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    ReservationAlreadyReleased,
    ReservationAlreadySettled,
    ReservationExpired,
)
from grants.model import Category
from ledger.limits import BATCH_EVENTS_MAX
from tests.credits.conftest import AGENT, OverdraftMode, World
from wallets.chains import Overage
from wallets.statements import reservation_status

S = 1_000_000_000


def test_reserve_holds_and_partial_settle_releases_the_rest(world: World) -> None:
    wallet = world.wallet(AGENT)
    a = world.grant(wallet, 60, expires_at_ns=world.now() + 100 * S)
    b = world.grant(wallet, 100)
    r = world.reserve(100)
    assert [(f.account_id, f.amount) for f in r.funded_by] == [(a.id, 60), (b.id, 40)]
    assert world.account(a.id).debits_pending == 60
    assert world.check(1).reserved == 100
    result = world.settle(r.reservation_id, 70)
    assert (result.collected, result.released, result.overage) == (70, 30, 0)
    # Burn order: the block that expires first pays first.
    assert world.account(a.id).debits_posted == 60
    assert world.account(b.id).debits_posted == 10
    assert world.available(b.id) == 90
    assert world.account(b.id).debits_pending == 0


def test_settle_replay_and_conflict(world: World) -> None:
    wallet = world.wallet(AGENT)
    world.grant(wallet, 100)
    r = world.reserve(50)
    first = world.settle(r.reservation_id, 20, key="s1")
    again = world.settle(r.reservation_id, 20, key="s1")
    assert again.replayed and again.collected == first.collected == 20
    with pytest.raises(IdempotencyConflict):
        world.settle(r.reservation_id, 21, key="s1")
    with pytest.raises(ReservationAlreadySettled):
        world.settle(r.reservation_id, 20, key="s2")
    with pytest.raises(ReservationAlreadySettled):
        world.release(r.reservation_id)


def test_release_returns_everything(world: World) -> None:
    wallet = world.wallet(AGENT)
    g = world.grant(wallet, 100)
    r = world.reserve(80)
    assert world.available(g.id) == 20
    released = world.release(r.reservation_id, key="rel")
    assert released.released == 80
    assert world.available(g.id) == 100
    assert world.release(r.reservation_id, key="rel").replayed
    with pytest.raises(ReservationAlreadyReleased):
        world.settle(r.reservation_id, 10)
    # The controls are clean again: the next debit normalizes the residue and takes it all.
    world.debit(100)


@pytest.mark.manual_clock
def test_reservation_times_out_by_itself(world: World) -> None:
    wallet = world.wallet(AGENT)
    g = world.grant(wallet, 100)
    r = world.reserve(90, timeout_s=30)
    assert world.available(g.id) == 10
    world.clock.advance(31)
    assert world.available(g.id) == 100
    with pytest.raises(ReservationExpired):
        world.release(r.reservation_id)


@pytest.mark.manual_clock
def test_late_settle_falls_back_to_a_debit(world: World) -> None:
    wallet = world.wallet(AGENT)
    g = world.grant(wallet, 100)
    r = world.reserve(40, timeout_s=10)
    world.clock.advance(11)
    result = world.settle(r.reservation_id, 30)
    assert result.fallback_debit
    assert (result.collected, result.released) == (30, 40)
    assert world.available(g.id) == 70


@pytest.mark.parametrize(
    ("policy", "collected", "uncollected", "debt"),
    [(Overage.CAP, 20, 30, 0), (Overage.OVERDRAFT, 50, 0, 30)],
)
def test_over_settle_collects_the_excess_under_the_policy(
    world: World, policy: Overage, collected: int, uncollected: int, debt: int
) -> None:
    wallet = world.wallet(AGENT)
    g = world.grant(wallet, 100)
    r = world.reserve(80)
    result = world.settle(r.reservation_id, 130, policy=policy)
    assert result.overage == 50
    assert (result.overage_collected, result.overage_uncollected) == (collected, uncollected)
    assert result.collected == 80 + collected
    assert world.available(g.id) == 0
    assert world.account(wallet.debt_account_id).debits_posted == debt


def test_over_settle_reject_refuses_and_keeps_the_reservation(world: World) -> None:
    wallet = world.wallet(AGENT)
    g = world.grant(wallet, 100)
    r = world.reserve(80)
    with pytest.raises(InsufficientCredits):
        world.settle(r.reservation_id, 130, policy=Overage.REJECT)
    assert world.account(g.id).debits_pending == 80
    result = world.settle(r.reservation_id, 95, policy=Overage.REJECT)
    assert (result.collected, result.overage_collected) == (95, 15)
    assert world.available(g.id) == 5


@pytest.mark.manual_clock
def test_expiry_while_reserved_sweeps_what_comes_back(world: World) -> None:
    wallet = world.wallet(AGENT)
    g = world.grant(wallet, 100, expires_at_ns=world.now() + 10 * S)
    r = world.reserve(70, timeout_s=3600)
    world.clock.advance(11)
    swept = world.run(world.grant_service.sweep(world.clock())).swept
    assert [(s.grant_id, s.amount, s.reason) for s in swept] == [(g.id, 30, "expired")]
    assert world.account(g.id).debits_pending == 70  # still held
    world.settle(r.reservation_id, 50)
    swept = world.run(world.grant_service.sweep(world.clock())).swept
    assert [(s.amount, s.reason) for s in swept] == [(20, "expired")]
    assert world.available(g.id) == 0
    done = world.run(world.grant_service.sweep(world.clock()))
    assert (done.swept, done.finished) == ([], [g.id])  # nothing can come back to it now
    # An expired block funds nothing.
    with pytest.raises(InsufficientCredits):
        world.debit(1)


def test_promotional_before_paid_at_equal_expiry(world: World) -> None:
    wallet = world.wallet(AGENT, overdraft_mode=OverdraftMode.HARD)
    paid = world.grant(wallet, 100)
    promo = world.grant(wallet, 100, category=Category.PROMOTIONAL)
    r = world.reserve(150)
    assert [(f.account_id, f.amount) for f in r.funded_by] == [(promo.id, 100), (paid.id, 50)]


def test_a_reservation_reads_settled_or_released_however_busy_its_block_since(
    world: World,
) -> None:
    """Its marker's resolution says where it stands, by id: a status read used to search the
    transfers that followed its leg on its block, a batch of them, so on a block busier than
    that a settled reservation read held, then expired."""
    wallet = world.wallet(AGENT)
    world.grant(wallet, 10**9)
    settled = world.reserve(5)
    released = world.reserve(5)
    held = world.reserve(5)

    # A busy block: more reservations on it than a batch (the old search's window), before
    # these are settled and released.
    async def reserve_many() -> None:
        for _ in range(BATCH_EVENTS_MAX + 10):
            await world.reserve_async(1, timeout_s=3600)

    world.run(reserve_many())
    world.settle(settled.reservation_id, 3)
    world.release(released.reservation_id)
    now = world.now()
    statuses = [
        world.run(reservation_status(world.ledger, r.reservation_id, now)).status
        for r in (settled, released, held)
    ]
    assert statuses == ["settled", "released", "held"]
