"""The catalog caches each wallet's spend path; the cached path must always be the one a fresh
computation gives, across grant starts and expiries, budget periods and catalog writes."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from grants.model import Category, Grant
from wallets.catalog import (
    Budget,
    Catalog,
    Period,
    Resource,
    Wallet,
    period_end_ns,
    period_start_ns,
)

DAY_NS = 86_400 * 10**9
T0 = int(dt.datetime(2026, 1, 30, tzinfo=dt.UTC).timestamp()) * 10**9
LEDGER = 9


def _catalog() -> tuple[Catalog, Wallet]:
    catalog = Catalog()
    catalog.put_resource(Resource(1, 100, 1, "team"))
    catalog.put_resource(Resource(2, 100, 1, "agent", parent_id=1))
    catalog.put_wallet(Wallet(10, 1, LEDGER))
    wallet = Wallet(20, 2, LEDGER, fall_through=True)
    catalog.put_wallet(wallet)
    return catalog, wallet


times = st.integers(min_value=T0 - 40 * DAY_NS, max_value=T0 + 40 * DAY_NS)
grants = st.lists(
    st.tuples(st.sampled_from([10, 20]), times, st.one_of(st.none(), st.integers(1, 30 * DAY_NS))),
    max_size=6,
)
writes = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.sampled_from([10, 20]), times),
        st.tuples(st.just("budget"), st.sampled_from(list(Period)), st.sampled_from([1, 2])),
        st.tuples(st.just("fall_through"), st.booleans(), st.just(0)),
    ),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(grants, st.lists(times, min_size=1, max_size=20), writes)
def test_the_cached_path_is_always_the_fresh_one(
    blocks: list[tuple[int, int, int | None]],
    at: list[int],
    changes: list[tuple[str, object, object]],
) -> None:
    catalog, wallet = _catalog()
    next_id = iter(range(1000, 2000))
    for wallet_id, start, length in blocks:
        catalog.put_grant(
            Grant(
                id=next(next_id),
                wallet_id=wallet_id,
                ledger=LEDGER,
                amount=5,
                category=Category.PAID,
                effective_at_ns=start,
                expires_at_ns=None if length is None else start + length,
            )
        )
    pending = list(changes)
    for step, at_ns in enumerate(sorted(at)):
        assert catalog.spend_path(wallet, at_ns) == catalog._spend_path(wallet, at_ns)[0]
        if pending and step % 3 == 2:
            kind, a, b = pending.pop()
            if kind == "grant":
                catalog.put_grant(
                    Grant(
                        id=next(next_id),
                        wallet_id=int(a),  # type: ignore[call-overload]
                        ledger=LEDGER,
                        amount=1,
                        category=Category.PROMOTIONAL,
                        effective_at_ns=int(b),  # type: ignore[call-overload]
                    )
                )
            elif kind == "budget":
                catalog.put_budget(Budget(next(next_id), int(b), LEDGER, Period(a), 50))  # type: ignore[call-overload]
            else:
                wallet = Wallet(20, 2, LEDGER, fall_through=bool(a))
                catalog.put_wallet(wallet)
            assert catalog.spend_path(wallet, at_ns) == catalog._spend_path(wallet, at_ns)[0]


def test_a_path_is_reused_within_its_window_and_not_past_it() -> None:
    catalog, wallet = _catalog()
    grant = Grant(
        id=500,
        wallet_id=20,
        ledger=LEDGER,
        amount=5,
        category=Category.PAID,
        effective_at_ns=T0,
        expires_at_ns=T0 + DAY_NS,
    )
    catalog.put_grant(grant)
    first = catalog.spend_path(wallet, T0 + 1)
    assert catalog.spend_path(wallet, T0 + 2) is first  # cached
    assert [s.account_id for s in first.sources] == [500]
    after = catalog.spend_path(wallet, T0 + DAY_NS)
    assert after is not first and after.sources == ()
    before = catalog.spend_path(wallet, T0 - 1)
    assert before.sources == ()
    catalog.drop_grant(500)
    assert catalog.spend_path(wallet, T0 + 1).sources == ()


def test_period_end_is_the_next_period_start() -> None:
    at = int(dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC).timestamp()) * 10**9
    jan = int(dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()) * 10**9
    assert period_end_ns(Period.DAY, at) == jan
    assert period_end_ns(Period.MONTH, at) == jan
    assert (
        period_end_ns(Period.WEEK, at)
        == int(
            dt.datetime(2027, 1, 4, tzinfo=dt.UTC).timestamp()  # the next Monday
        )
        * 10**9
    )
    assert period_end_ns(Period.LIFETIME, at) is None


@given(
    st.sampled_from([Period.DAY, Period.WEEK, Period.MONTH]),
    st.integers(min_value=T0 - 400 * DAY_NS, max_value=T0 + 400 * DAY_NS),
    st.integers(1, 10**6),
)
def test_an_instant_just_before_a_period_ends_is_in_that_period(
    period: Period, at: int, before_ns: int
) -> None:
    """Found by the test above: an instant a few hundred ns before midnight, converted through
    a float, was put in the next day's budget period."""
    end = period_end_ns(period, at)
    assert end is not None
    assert period_start_ns(period, end - before_ns) == period_start_ns(period, at)
    assert period_start_ns(period, end) == end
