"""Conversions at the repository boundary, and the limits of repository calls."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from decimal import Decimal
from typing import Final

from ledger.limits import U128_MAX

# The most ids one call takes (`= ANY(%s)` with an array parameter) and the most rows one call
# returns; a caller with more pages through them.
IDS_PER_CALL_MAX: Final = 10_000
ROWS_PER_PAGE_MAX: Final = 1_000
ROWS_PER_PAGE_DEFAULT: Final = 100
assert 0 < ROWS_PER_PAGE_DEFAULT <= ROWS_PER_PAGE_MAX <= IDS_PER_CALL_MAX


def to_uuid(value: int) -> uuid.UUID:
    """A u128 id as the `uuid` that stores it."""
    assert isinstance(value, int) and not isinstance(value, bool), value
    assert 0 <= value <= U128_MAX, value
    return uuid.UUID(int=value)


def to_uuid_or_none(value: int | None) -> uuid.UUID | None:
    return None if value is None else to_uuid(value)


def uuids(values: Collection[int]) -> list[uuid.UUID]:
    """Many u128 ids as uuids, for an `= ANY(%s)` parameter; at most IDS_PER_CALL_MAX."""
    assert len(values) <= IDS_PER_CALL_MAX, f"{len(values)} ids, more than {IDS_PER_CALL_MAX}"
    return [to_uuid(value) for value in values]


def from_uuid(value: uuid.UUID) -> int:
    return value.int


def from_uuid_or_none(value: uuid.UUID | None) -> int | None:
    return None if value is None else value.int


def to_amount(value: int) -> int:
    """An amount for a `u128` column: an int, checked here so a bug fails before the round trip.

    (Postgres checks it again; psycopg sends an int too large for bigint as numeric.)
    """
    assert isinstance(value, int) and not isinstance(value, bool), value
    return value


def from_amount(value: Decimal | int) -> int:
    """A `u128` column's value as an int (psycopg reads numeric as Decimal; it is integral)."""
    result = int(value)
    assert result == value, value
    return result


def page_limit(limit: int) -> int:
    assert 1 <= limit <= ROWS_PER_PAGE_MAX, f"limit {limit} is not in 1..{ROWS_PER_PAGE_MAX}"
    return limit
