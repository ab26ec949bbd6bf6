"""The per-block arithmetic of revenue recognition (finance/recognition.py)."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from finance.recognition import (
    CASH,
    CONTRA_REVENUE,
    CONTRACT_LIABILITY,
    REVENUE_BREAKAGE,
    REVENUE_USAGE,
    Draft,
    Route,
    State,
    Terms,
    apply,
    balanced,
    round_half_away,
    value_of,
)
from ledger.ids import derive_id, journal_id


def _net(drafts: list[Draft], account: str, *, functional: bool = False) -> int:
    """Credits minus debits on `account`."""
    total = 0
    for draft in drafts:
        for line in draft.lines:
            if line.account == account:
                if functional:
                    total += (line.functional_credit_minor or 0) - (
                        line.functional_debit_minor or 0
                    )
                else:
                    total += line.credit_minor - line.debit_minor
    return total


def test_round_half_away_from_zero() -> None:
    assert round_half_away(Fraction(5, 2)) == 3
    assert round_half_away(Fraction(-5, 2)) == -3
    assert round_half_away(Fraction(7, 3)) == 2
    assert round_half_away(Fraction(-7, 3)) == -2
    assert value_of(10_000, 1, 3) == 3333
    assert value_of(10_000, 2, 3) == 6667
    assert value_of(10_000, 3, 3) == 10_000


def test_three_slices_of_a_third_sum_to_the_consideration() -> None:
    terms = Terms(credits=3, consideration_minor=100, paid=True)
    state, posted = State(), []
    for _ in range(3):
        drafts, state = apply(terms, state, Route.USAGE, 1)
        posted += drafts
    assert [d.lines[0].debit_minor for d in posted] == [33, 34, 33]
    assert _net(posted, REVENUE_USAGE) == 100


def test_the_golden_block() -> None:
    """ACCOUNTING.md's B1: 1,000 credits for $100.00; 400 used in January, 300 in February, 300
    expire."""
    terms = Terms(credits=1000, consideration_minor=10_000, paid=True)
    purchase, state = apply(terms, State(), Route.GRANT, 1000)
    assert purchase[0].lines[0].account == CASH and purchase[0].lines[0].debit_minor == 10_000
    january: list[Draft] = []
    for credits in (150, 250):
        drafts, state = apply(terms, state, Route.USAGE, credits)
        january += drafts
    assert _net(january, REVENUE_USAGE) == 4000
    february: list[Draft] = []
    for route, credits in ((Route.USAGE, 100), (Route.USAGE, 200), (Route.EXPIRE, 300)):
        drafts, state = apply(terms, state, route, credits)
        february += drafts
    assert _net(february, REVENUE_USAGE) == 3000
    assert _net(february, REVENUE_BREAKAGE) == 3000
    assert _net(purchase + january + february, CONTRACT_LIABILITY) == 0


def test_promotional_blocks_post_nothing() -> None:
    terms = Terms(credits=200, consideration_minor=0, paid=False)
    drafts, state = apply(terms, State(), Route.GRANT, 200)
    assert drafts == []
    drafts, state = apply(terms, state, Route.USAGE, 50)
    assert drafts == [] and state.credits_out == 50


def test_a_refund_above_the_unused_value_goes_to_contra_revenue() -> None:
    terms = Terms(credits=100, consideration_minor=1000, paid=True)
    _, state = apply(terms, State(), Route.USAGE, 50)
    [draft], _ = apply(terms, state, Route.REFUND, 50, refund_minor=600)
    assert balanced(draft)
    accounts = {line.account: (line.debit_minor, line.credit_minor) for line in draft.lines}
    assert accounts == {CONTRACT_LIABILITY: (500, 0), CASH: (0, 600), CONTRA_REVENUE: (100, 0)}


def test_a_refund_below_the_unused_value_leaves_the_rest_to_breakage() -> None:
    terms = Terms(credits=100, consideration_minor=1000, paid=True)
    [draft], _ = apply(terms, State(), Route.REFUND, 100, refund_minor=900)
    accounts = {line.account: (line.debit_minor, line.credit_minor) for line in draft.lines}
    assert accounts == {CONTRACT_LIABILITY: (1000, 0), CASH: (0, 900), REVENUE_BREAKAGE: (0, 100)}


_ROUTES = st.sampled_from([Route.USAGE, Route.RESTORE, Route.EXPIRE, Route.VOID, Route.REFUND])


@settings(max_examples=300, deadline=None)
@given(
    credits=st.integers(1, 10**6),
    consideration=st.integers(0, 10**9),
    rate=st.sampled_from([Fraction(0), Fraction(1, 10), Fraction(1, 3), Fraction(9, 10)]),
    fx=st.sampled_from([None, Fraction(1), Fraction(10842, 10000), Fraction(1, 7)]),
    moves=st.lists(st.tuples(_ROUTES, st.integers(1, 10**6), st.integers(0, 10**6)), max_size=30),
)
def test_every_block_sums_to_its_consideration(
    credits: int,
    consideration: int,
    rate: Fraction,
    fx: Fraction | None,
    moves: list[tuple[Route, int, int]],
) -> None:
    """Whatever the slices: every draft balances, the liability never goes negative, and once
    nothing is left the block has posted exactly C out of 2100 (and C at its rate)."""
    terms = Terms(
        credits=credits,
        consideration_minor=consideration,
        paid=True,
        functional_consideration=None if fx is None else consideration * fx,
        breakage_rate=rate,
    )
    posted, state = apply(terms, State(), Route.GRANT, credits)
    used = 0
    for route, amount, cash in moves:
        left = credits - state.credits_out
        if route is Route.RESTORE:
            amount = min(amount, used)
        else:
            amount = min(amount, left)
        if amount == 0:
            continue
        refund = cash if route is Route.REFUND else None
        drafts, state = apply(terms, state, route, amount, refund_minor=refund)
        used += {Route.USAGE: amount, Route.RESTORE: -amount}.get(route, 0)
        assert all(balanced(d) for d in drafts)
        posted += drafts
        assert _net(posted, CONTRACT_LIABILITY) >= 0
    if credits - state.credits_out:
        drafts, state = apply(terms, state, Route.EXPIRE, credits - state.credits_out)
        posted += drafts
    assert _net(posted, CONTRACT_LIABILITY) == 0
    assert state.accrued_minor == 0 and state.value_out_minor == consideration
    if fx is not None:
        assert _net(posted, CONTRACT_LIABILITY, functional=True) == 0


def test_the_journal_id_is_derive_id_of_its_parts() -> None:
    for transfer, kind, block, index in ((1, "debit", 2, 0), (2**128 - 1, "settle", 7, 3)):
        assert journal_id(transfer, kind, block, index) == derive_id(
            "finance/journal", transfer, kind, block, index
        )
