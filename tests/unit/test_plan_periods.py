"""The periods of a plan's rule: computed from the anchor, month ends done right."""

from __future__ import annotations

import calendar
import datetime as dt

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ledger.repositories.grants import GrantCategory
from ledger.repositories.plans import Allocation, PlanRule, Subscription
from wallets.plan_periods import (
    PeriodUnit,
    first_index_from,
    period_bounds,
    period_index_at,
    period_start,
    prorate,
    remaining_fraction_ns,
)
from wallets.plans import due_rows

UTC = dt.UTC
M = PeriodUnit.MONTH


def _d(y: int, m: int, d: int, h: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, h, tzinfo=UTC)


def test_a_subscription_started_on_the_31st_renews_on_the_last_day_of_shorter_months() -> None:
    anchor = _d(2025, 1, 31, 9)
    starts = [period_start(anchor, M, 1, k) for k in range(14)]
    assert starts == [
        _d(2025, 1, 31, 9),
        _d(2025, 2, 28, 9),
        _d(2025, 3, 31, 9),
        _d(2025, 4, 30, 9),
        _d(2025, 5, 31, 9),
        _d(2025, 6, 30, 9),
        _d(2025, 7, 31, 9),
        _d(2025, 8, 31, 9),
        _d(2025, 9, 30, 9),
        _d(2025, 10, 31, 9),
        _d(2025, 11, 30, 9),
        _d(2025, 12, 31, 9),
        _d(2026, 1, 31, 9),
        _d(2026, 2, 28, 9),
    ]
    # A leap year's February has a 29th.
    assert period_start(_d(2024, 1, 31), M, 1, 1) == _d(2024, 2, 29)
    # Never drifts: after February the 30th-anchored months go back to the 30th.
    assert period_start(_d(2025, 1, 30), M, 1, 2) == _d(2025, 3, 30)


def test_a_year_anchored_on_february_29th() -> None:
    anchor = _d(2024, 2, 29)
    assert [period_start(anchor, PeriodUnit.YEAR, 1, k) for k in range(5)] == [
        _d(2024, 2, 29),
        _d(2025, 2, 28),
        _d(2026, 2, 28),
        _d(2027, 2, 28),
        _d(2028, 2, 29),
    ]


def test_days_and_weeks_are_plain() -> None:
    anchor = _d(2025, 3, 30, 1)
    assert period_start(anchor, PeriodUnit.DAY, 1, 3) == _d(2025, 4, 2, 1)
    assert period_start(anchor, PeriodUnit.WEEK, 2, 2) == _d(2025, 4, 27, 1)
    assert period_bounds(anchor, PeriodUnit.DAY, 7, 1) == (_d(2025, 4, 6, 1), _d(2025, 4, 13, 1))


def test_the_period_of_an_instant() -> None:
    anchor = _d(2025, 1, 31)
    assert period_index_at(anchor, M, 1, _d(2025, 1, 30)) is None
    assert period_index_at(anchor, M, 1, _d(2025, 2, 27, 23)) == 0
    assert period_index_at(anchor, M, 1, _d(2025, 2, 28)) == 1
    assert period_index_at(anchor, M, 1, _d(2025, 3, 30)) == 1
    assert period_index_at(anchor, M, 1, _d(2025, 3, 31)) == 2
    assert first_index_from(anchor, M, 1, _d(2025, 2, 28)) == 1
    assert first_index_from(anchor, M, 1, _d(2025, 2, 28, 1)) == 2
    assert first_index_from(anchor, M, 1, _d(2020, 1, 1)) == 0


def test_prorating_rounds_toward_zero() -> None:
    assert prorate(100, 1, 3) == 33
    assert prorate(-100, 1, 3) == -33
    assert prorate(100, 0, 3) == 0 and prorate(100, 3, 3) == 100
    index, left, length = remaining_fraction_ns(_d(2025, 4, 1), M, 1, _d(2025, 4, 16)) or (0, 0, 0)
    assert (index, left * 2) == (0, length)


anchors = st.datetimes(
    min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2400, 1, 1), timezones=st.just(UTC)
)
units = st.sampled_from(list(PeriodUnit))
counts = st.integers(min_value=1, max_value=13)
indexes = st.integers(min_value=0, max_value=600)


@settings(max_examples=300, deadline=None)
@given(anchors, units, counts, indexes)
def test_every_start_is_computed_from_the_anchor(
    anchor: dt.datetime, unit: PeriodUnit, count: int, index: int
) -> None:
    assume(unit is not PeriodUnit.YEAR or count * (index + 1) < 5000)
    start, end = period_bounds(anchor, unit, count, index)
    assert start < end
    assert period_start(anchor, unit, count, 0) == anchor
    assert start.time() == anchor.time() and start.tzinfo is UTC
    if unit in (PeriodUnit.MONTH, PeriodUnit.YEAR):
        # The anchor's day, or the month's last day when it has fewer.
        last = calendar.monthrange(start.year, start.month)[1]
        assert start.day == min(anchor.day, last)
        months = (start.year - anchor.year) * 12 + start.month - anchor.month
        assert months == count * index * (12 if unit is PeriodUnit.YEAR else 1)
    else:
        days = count * index * (7 if unit is PeriodUnit.WEEK else 1)
        assert start - anchor == dt.timedelta(days=days)


@settings(max_examples=300, deadline=None)
@given(anchors, units, counts, indexes, st.integers(min_value=0, max_value=10**6))
def test_every_instant_is_in_exactly_one_period(
    anchor: dt.datetime, unit: PeriodUnit, count: int, index: int, into_us: int
) -> None:
    assume(unit is not PeriodUnit.YEAR or count * (index + 2) < 5000)
    start, end = period_bounds(anchor, unit, count, index)
    at = min(end - dt.timedelta(microseconds=1), start + dt.timedelta(microseconds=into_us))
    assert period_index_at(anchor, unit, count, at) == index
    assert period_index_at(anchor, unit, count, start) == index
    assert period_index_at(anchor, unit, count, end) == index + 1
    assert first_index_from(anchor, unit, count, start) == index
    assert first_index_from(anchor, unit, count, at) == (index if at == start else index + 1)


def _sub(anchor: dt.datetime) -> Subscription:
    return Subscription(
        id=1,
        resource_id=2,
        plan_id=3,
        anchor_at=anchor,
        allocate_from=anchor,
        live_from=anchor,
        state="active",
        changes=0,
        next_due_at=anchor,
        created_at=anchor,
        updated_at=anchor,
        paused_at=None,
        cancelled_at=None,
    )


def _rule(unit: PeriodUnit, count: int, rule_id: int = 9) -> PlanRule:
    return PlanRule(
        id=rule_id,
        plan_id=3,
        credit_type_id=1,
        amount=100,
        period_unit=unit.value,
        period_count=count,
        category=GrantCategory.PROMOTIONAL,
        consideration_minor=0,
        currency=None,
        priority=0,
        expiry_periods=1,
        rollover_min=None,
        rollover_max=None,
    )


@settings(max_examples=100, deadline=None)
@given(
    anchors,
    units,
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=0, max_value=400 * 86_400),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=40),
)
def test_allocating_in_bounded_steps_gives_each_due_period_once(
    anchor: dt.datetime, unit: PeriodUnit, count: int, late_s: int, rooms: list[int]
) -> None:
    """However the work is cut into bounded calls, the rows are the due periods, each once, in
    order, each with its own dates; what is left is due at the next period's start."""
    sub, rule = _sub(anchor), _rule(unit, count)
    at = anchor + dt.timedelta(seconds=late_s)
    expected = (period_index_at(anchor, unit, count, at) or 0) + 1
    rows: list[Allocation] = []
    last: dict[int, int] = {}
    for room in rooms * 1000:  # 1000 calls of at least 1 row: more than 401 periods
        batch, next_due = due_rows(sub, [rule], last, at, room)
        rows += batch
        if batch:
            last[rule.id] = batch[-1].period_index
        assert next_due is not None
        if not batch:
            assert next_due > at
            break
    assert [r.period_index for r in rows] == list(range(expected))
    for r in rows:
        assert (r.period_start, r.period_end) == period_bounds(anchor, unit, count, r.period_index)
        assert r.effective_at == r.period_start and r.expires_at == r.period_end
    assert len({r.id for r in rows}) == len(rows) == len({r.grant_id for r in rows})
