"""The periods of a plan's allocation rule, anchored on a subscription's start. Pure arithmetic.

Invariants:
- Period k starts at `period_start(anchor, unit, count, k)`, computed from the anchor every time,
  never by adding to the previous boundary: a month-end anchor keeps its day. Anchored on
  Jan 31, the months start Feb 28 (29 in a leap year), Mar 31, Apr 30, May 31, ...; a yearly
  period anchored on Feb 29 starts on Feb 28 in the years that have none. Days and weeks are
  plain multiples of 24 hours (UTC has no daylight saving).
- Period k is [start(k), start(k + 1)): starts strictly increase, so every instant at or after
  the anchor is in exactly one period.
- The time of day of the anchor is kept in every start.
"""

from __future__ import annotations

import calendar
import datetime as dt
import enum

PERIOD_INDEX_MAX = 1_000_000  # ~2,700 years of days: far past what the ledger's times hold
_YEAR_MAX = 9999


class PeriodUnit(enum.StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


def add_months(anchor: dt.datetime, months: int) -> dt.datetime:
    """`anchor` moved `months` calendar months on, its day of the month clamped to the last
    day of the month reached (Jan 31 + 1 month = Feb 28 or 29)."""
    assert months >= 0
    year, month0 = divmod(anchor.month - 1 + months, 12)
    year += anchor.year
    if year > _YEAR_MAX:
        raise OverflowError("past year 9999")
    day = min(anchor.day, calendar.monthrange(year, month0 + 1)[1])
    return anchor.replace(year=year, month=month0 + 1, day=day)


def period_start(anchor: dt.datetime, unit: PeriodUnit, count: int, index: int) -> dt.datetime:
    """The start of period `index` (0: the anchor) of a rule of `count` `unit`s."""
    assert count >= 1 and 0 <= index <= PERIOD_INDEX_MAX
    steps = count * index
    if unit is PeriodUnit.DAY:
        return anchor + dt.timedelta(days=steps)
    if unit is PeriodUnit.WEEK:
        return anchor + dt.timedelta(weeks=steps)
    if unit is PeriodUnit.MONTH:
        return add_months(anchor, steps)
    return add_months(anchor, 12 * steps)


def period_bounds(
    anchor: dt.datetime, unit: PeriodUnit, count: int, index: int
) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of period `index`."""
    return period_start(anchor, unit, count, index), period_start(anchor, unit, count, index + 1)


def _estimate(anchor: dt.datetime, unit: PeriodUnit, count: int, at: dt.datetime) -> int:
    """A guess of the period that holds `at`, within one or two of the right one."""
    if unit is PeriodUnit.DAY:
        return (at - anchor) // dt.timedelta(days=count)
    if unit is PeriodUnit.WEEK:
        return (at - anchor) // dt.timedelta(weeks=count)
    months = (at.year - anchor.year) * 12 + at.month - anchor.month
    return months // (count if unit is PeriodUnit.MONTH else 12 * count)


def period_index_at(
    anchor: dt.datetime, unit: PeriodUnit, count: int, at: dt.datetime
) -> int | None:
    """The index of the period that holds `at`; None before the anchor."""
    if at < anchor:
        return None
    index = max(0, min(PERIOD_INDEX_MAX - 1, _estimate(anchor, unit, count, at)))
    while index > 0 and period_start(anchor, unit, count, index) > at:
        index -= 1
    while index + 1 < PERIOD_INDEX_MAX and period_start(anchor, unit, count, index + 1) <= at:
        index += 1
    return index


def first_index_from(anchor: dt.datetime, unit: PeriodUnit, count: int, since: dt.datetime) -> int:
    """The first period that starts at or after `since`."""
    index = period_index_at(anchor, unit, count, since)
    if index is None:
        return 0
    return index if period_start(anchor, unit, count, index) == since else index + 1


def remaining_fraction_ns(
    anchor: dt.datetime, unit: PeriodUnit, count: int, at: dt.datetime
) -> tuple[int, int, int] | None:
    """(index, ns left, ns long) of the period that holds `at`; None before the anchor. The
    fraction left is ns left / ns long, kept as two integers so amounts prorate exactly."""
    index = period_index_at(anchor, unit, count, at)
    if index is None:
        return None
    start, end = period_bounds(anchor, unit, count, index)
    return index, _ns(end - at), _ns(end - start)


def prorate(amount: int, left_ns: int, length_ns: int) -> int:
    """`amount` scaled by left/length, rounded toward zero (never more than was promised)."""
    assert 0 <= left_ns <= length_ns and length_ns > 0
    magnitude = abs(amount) * left_ns // length_ns
    return magnitude if amount >= 0 else -magnitude


def _ns(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
