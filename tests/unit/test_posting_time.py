"""The poster's accounting times are ns since the epoch (finance/posting.py): the month an
instant books in is the UTC month of its datetime, as it was when the poster read datetimes,
and a void counts at its engine time."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from finance.posting import accounting_date_ns, booking, month_of
from ledger.clock import datetime_of_ns, ns_of_datetime
from ledger.repositories.finance import BlockEntry

FIRST_NS = ns_of_datetime(dt.datetime(1, 1, 1, tzinfo=dt.UTC))
LAST_NS = ns_of_datetime(dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC)) + 999


def _month(at: dt.datetime) -> dt.date:
    """The month of an aware datetime as the poster worked it out from one."""
    at = at.astimezone(dt.UTC)
    return dt.date(at.year, at.month, 1)


def _entry(kind: str, effective_at_ns: int, engine_ts: int) -> BlockEntry:
    return BlockEntry(1, kind, effective_at_ns, engine_ts, 1, 2, 3, 4, 5, 6, 0, -1)


@given(st.integers(min_value=FIRST_NS, max_value=LAST_NS))
def test_month_of_an_instant_is_the_utc_month_of_its_datetime(at_ns: int) -> None:
    assert month_of(at_ns) == _month(datetime_of_ns(at_ns))


def test_month_of_at_the_edges() -> None:
    february = ns_of_datetime(dt.datetime(2025, 2, 1, tzinfo=dt.UTC))
    assert month_of(february) == dt.date(2025, 2, 1)
    assert month_of(february - 1) == dt.date(2025, 1, 1)
    assert month_of(0) == dt.date(1970, 1, 1)
    assert month_of(-1) == dt.date(1969, 12, 1)
    assert month_of(FIRST_NS) == dt.date(1, 1, 1)
    assert month_of(LAST_NS) == dt.date(9999, 12, 1)
    # A datetime in another zone, read back as an instant, books in the UTC month.
    tokyo = dt.datetime(2025, 3, 1, 8, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    assert month_of(ns_of_datetime(tokyo)) == _month(tokyo) == dt.date(2025, 2, 1)


def test_a_void_counts_at_its_engine_time_the_rest_at_their_effective_time() -> None:
    effective_ns, engine_ns = 1_000_000_123_456_789, 2_000_000_987_654_321
    for kind in ("grant", "debit", "expire", "refund", "correction", "rollover"):
        assert accounting_date_ns(_entry(kind, effective_ns, engine_ns)) == effective_ns
    assert accounting_date_ns(_entry("void", effective_ns, engine_ns)) == engine_ns


def test_booking_in_a_closed_month_moves_to_the_first_open_one() -> None:
    january = ns_of_datetime(dt.datetime(2025, 1, 31, 23, 59, tzinfo=dt.UTC))
    assert booking(january, None) == (dt.date(2025, 1, 1), None)
    assert booking(january, dt.date(2024, 12, 1)) == (dt.date(2025, 1, 1), None)
    assert booking(january, dt.date(2025, 2, 1)) == (dt.date(2025, 3, 1), dt.date(2025, 1, 1))
