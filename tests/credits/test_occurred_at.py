"""`occurred_at` on debits and settles: the legs carry it as their business effective time
(`user_data_64`), the header does not; it is part of the request's fingerprint; it is bounded
by the service's clock; the spend path (which blocks are effective, which budget period) is
resolved at it."""

from __future__ import annotations

import pytest

from grants.errors import IdempotencyConflict, InsufficientCredits, OccurredAtOutOfRange
from ledger.ids import reservation_resolution_id
from ledger.limits import OCCURRED_AT_AGE_S_MAX, OCCURRED_AT_SKEW_S_MAX
from ledger.operations import read_legs
from ledger.types import Transfer
from tests.credits.conftest import AGENT, Period, World
from wallets import chains

S = 1_000_000_000
DAY = 86_400 * S
pytestmark = pytest.mark.manual_clock


def _legs(world: World, op_id: int, count: int = 64) -> list[Transfer]:
    return [t for t in world.run(read_legs(world.ledger, op_id, count)) if t.id]


def _effective_times(world: World, op_id: int, count: int = 64) -> set[int]:
    return {t.user_data_64 for t in _legs(world, op_id, count)[1:]}


def test_a_debit_s_legs_carry_its_occurred_at_and_the_header_does_not(world: World) -> None:
    wallet = world.wallet(AGENT)
    world.grant(wallet, 100, effective_at_ns=world.now() - 10 * DAY)
    occurred = world.now() - 3 * DAY
    result = world.debit(30, occurred_at_ns=occurred)
    legs = _legs(world, result.operation_id)
    assert legs[0].user_data_64 == 0  # the header: a function of the key alone
    assert {t.user_data_64 for t in legs[1:]} == {occurred}
    plain = world.debit(5)
    assert _effective_times(world, plain.operation_id) == {world.now()}


def test_occurred_at_is_part_of_the_fingerprint(world: World) -> None:
    wallet = world.wallet(AGENT)
    world.grant(wallet, 100, effective_at_ns=world.now() - 10 * DAY)
    occurred = world.now() - DAY
    first = world.debit(10, key="k", occurred_at_ns=occurred)
    again = world.debit(10, key="k", occurred_at_ns=occurred)
    assert again.replayed and again.operation_id == first.operation_id
    with pytest.raises(IdempotencyConflict):
        world.debit(10, key="k", occurred_at_ns=occurred - S)
    with pytest.raises(IdempotencyConflict):
        world.debit(10, key="k")
    world.debit(10, key="plain")
    with pytest.raises(IdempotencyConflict):
        world.debit(10, key="plain", occurred_at_ns=world.now())


def test_occurred_at_out_of_range_is_refused_before_anything_is_written(world: World) -> None:
    wallet = world.wallet(AGENT)
    grant = world.grant(wallet, 100, effective_at_ns=world.now() - 60 * DAY)
    now = world.now()
    for occurred in (
        now + OCCURRED_AT_SKEW_S_MAX * S + 1,
        now - OCCURRED_AT_AGE_S_MAX * S - 1,
    ):
        with pytest.raises(OccurredAtOutOfRange) as refused:
            world.debit(10, occurred_at_ns=occurred)
        assert refused.value.details == {"field": "occurred_at"}
    assert world.available(grant.id) == 100
    # The bounds themselves are accepted.
    world.debit(1, occurred_at_ns=now + OCCURRED_AT_SKEW_S_MAX * S)
    world.debit(1, occurred_at_ns=now - OCCURRED_AT_AGE_S_MAX * S)
    assert world.available(grant.id) == 98


def test_the_bounds_follow_the_service_s_clock(world: World) -> None:
    wallet = world.wallet(AGENT)
    world.grant(wallet, 100, effective_at_ns=world.now() - S)
    ahead = world.now() + 2 * DAY
    with pytest.raises(OccurredAtOutOfRange):
        world.debit(1, occurred_at_ns=ahead)
    world.clock.advance_ns(2 * DAY)
    assert world.debit(1, occurred_at_ns=ahead).amount == 1


def test_the_spend_path_is_resolved_at_occurred_at(world: World) -> None:
    """A block effective only after the service was delivered does not fund it: the usage's
    accounting date would come before the block's."""
    wallet = world.wallet(AGENT)
    now = world.now()
    world.grant(wallet, 100, effective_at_ns=now - S)
    with pytest.raises(InsufficientCredits):
        world.debit(10, occurred_at_ns=now - DAY)
    older = world.grant(wallet, 20, effective_at_ns=now - 2 * DAY)
    result = world.debit(10, occurred_at_ns=now - DAY)
    assert [(f.account_id, f.amount) for f in result.funded_by] == [(older.id, 10)]


def test_a_late_debit_counts_against_the_budget_of_its_own_period(world: World) -> None:
    wallet = world.wallet(AGENT)
    now = world.now()
    world.grant(wallet, 100, effective_at_ns=now - 10 * DAY)
    world.budget(AGENT, 15, Period.DAY)
    world.debit(10, occurred_at_ns=now - DAY)  # yesterday's budget
    world.debit(10)  # today's
    world.debit(5, occurred_at_ns=now - DAY)
    with pytest.raises(Exception) as refused:
        world.debit(1, occurred_at_ns=now - DAY)
    assert getattr(refused.value, "code", None) == "budget_exceeded"


def test_a_settle_s_legs_carry_its_occurred_at(world: World) -> None:
    wallet = world.wallet(AGENT)
    now = world.now()
    world.grant(wallet, 100, effective_at_ns=now - 10 * DAY)
    reservation = world.reserve(40, timeout_s=3600)
    occurred = now - 60 * S
    result = world.settle(reservation.reservation_id, 50, key="s", occurred_at_ns=occurred)
    assert (result.collected, result.overage) == (50, 10)
    count = chains.OVERAGE_LEG_INDEX + chains.CHAIN_LEGS_MAX + 1
    legs = _legs(world, result.operation_id, count)
    assert legs[0].user_data_64 == 0
    assert {t.user_data_64 for t in legs[1:]} == {occurred}
    # The reservation's marker, resolved by the settle under an id of the reservation's.
    (marker,) = _legs(world, reservation.reservation_id, chains.RESERVATION_LEGS)[-1:]
    resolution = world.run(
        world.ledger.lookup_transfers([reservation_resolution_id(marker.user_data_128)])
    )
    assert [t.user_data_64 for t in resolution] == [occurred]
    with pytest.raises(IdempotencyConflict):
        world.settle(reservation.reservation_id, 50, key="s", occurred_at_ns=occurred + S)
    assert world.settle(reservation.reservation_id, 50, key="s", occurred_at_ns=occurred).replayed


def test_a_fallback_settle_carries_its_occurred_at(world: World) -> None:
    wallet = world.wallet(AGENT)
    world.grant(wallet, 100, effective_at_ns=world.now() - 10 * DAY)
    reservation = world.reserve(40, timeout_s=60)
    world.clock.advance(120)
    occurred = world.now() - 90 * S
    result = world.settle(reservation.reservation_id, 30, occurred_at_ns=occurred)
    assert result.fallback_debit and result.collected == 30
    assert _effective_times(world, result.operation_id) == {occurred}
