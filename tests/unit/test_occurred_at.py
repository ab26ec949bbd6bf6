"""The chain builders stamp every leg but the header with the operation's effective time (a
spend's occurred_at, or the time of recording); the bounds of occurred_at are the service's."""

from __future__ import annotations

import pytest

from grants.errors import OccurredAtOutOfRange
from ledger.ids import leg_id
from ledger.limits import OCCURRED_AT_AGE_S_MAX, OCCURRED_AT_SKEW_S_MAX
from ledger.types import Transfer
from wallets import chains
from wallets.chains import BudgetLeg, Operation, Overage, Source, SourceKind, SpendPath
from wallets.service import CreditService

S = 1_000_000_000
OCCURRED = 1_736_467_200 * S  # 2025-01-10T00:00:00Z
PATH = SpendPath(
    ledger=1,
    tenant=7,
    wallet_id=100,
    resource_id=13,
    sources=(Source(501, SourceKind.GRANT, 100), Source(502, SourceKind.GRANT, 100)),
    budgets=(BudgetLeg(900, 901, 13),),
)


def _op(op_id: int) -> Operation:
    return Operation(op_id, fingerprint=42, ledger=1, tenant=7, effective_at_ns=OCCURRED)


@pytest.mark.parametrize("timeout_s", [0, 60])
def test_a_drain_chain_carries_the_effective_time_on_every_leg_but_its_header(
    timeout_s: int,
) -> None:
    chain = chains.drain_chain(_op(1), PATH, 30, timeout_s=timeout_s)
    assert chain[0].user_data_64 == 0
    assert {t.user_data_64 for t in chain[1:]} == {OCCURRED}


def test_a_settle_chain_carries_it_on_its_posts_voids_settle_and_overage_legs() -> None:
    reservation = chains.drain_chain(_op(1), PATH, 30, timeout_s=60)
    # By index, as `read_legs` gives them: the marker at its fixed index.
    by_id = {t.id: t for t in reservation}
    ordered = [by_id.get(leg_id(1, i), Transfer()) for i in range(chains.RESERVATION_LEGS)]
    plan = chains.settle_chain(_op(2), ordered, 45, PATH, Overage.CAP)
    assert plan.overage == 15
    assert plan.chain[0].user_data_64 == 0
    assert {t.user_data_64 for t in plan.chain[1:]} == {OCCURRED}
    release = chains.release_chain(_op(3), ordered)
    assert {t.user_data_64 for t in release[1:]} == {OCCURRED}


def test_the_bounds_of_occurred_at() -> None:
    now = OCCURRED
    assert CreditService.occurred(None, now) == ()
    assert CreditService.occurred(now, now) == (now,)
    assert CreditService.occurred(now + OCCURRED_AT_SKEW_S_MAX * S, now)
    assert CreditService.occurred(now - OCCURRED_AT_AGE_S_MAX * S, now)
    for outside in (
        now + OCCURRED_AT_SKEW_S_MAX * S + 1,
        now - OCCURRED_AT_AGE_S_MAX * S - 1,
        -1,
    ):
        with pytest.raises(OccurredAtOutOfRange):
            CreditService.occurred(outside, now)
