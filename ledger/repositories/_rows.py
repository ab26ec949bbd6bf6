"""Conversions at the repository boundary, and the limits of repository calls."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, TypeVar

from psycopg import AsyncCursor
from psycopg.rows import TupleRow
from psycopg.types.numeric import IntLoader

from ledger.db import Connection
from ledger.limits import LIST_PAGE_ROWS_MAX, U128_MAX

# The most ids one call takes (`= ANY(%s)` with an array parameter) and the most rows one call
# returns; a caller with more pages through them.
IDS_PER_CALL_MAX: Final = 10_000
ROWS_PER_PAGE_MAX: Final = 1_000
ROWS_PER_PAGE_DEFAULT: Final = 100
assert 0 < ROWS_PER_PAGE_DEFAULT <= ROWS_PER_PAGE_MAX <= IDS_PER_CALL_MAX
assert LIST_PAGE_ROWS_MAX <= ROWS_PER_PAGE_MAX

# Where a page of a list starts: after the row with this (time, id). Lists are ordered by a
# time column and then the id, so that the order is total and stable while rows are added.
Keyset = tuple[datetime, int]
# A condition of a list: SQL with one `%s` per parameter, and the parameters.
Condition = tuple[str, tuple[Any, ...]]
T = TypeVar("T")


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


def hex_id(column: str) -> str:
    """SQL reading a `uuid` column as its 128 bits in hex, 32 digits ('0' when NULL: no id);
    `int(text, 16)` is then the id, as `from_uuid` gives it. A read of many rows skips
    building a uuid.UUID for each id this way (a Python loader costs more than the text)."""
    return f"coalesce(replace({column}::text, '-', ''), '0')"


class HexIds(dict[str, int]):
    """The id of each `hex_id` text asked for (`int(text, 16)`), parsed the first time: the
    rows of a many-row read share most of their ids (a batch's blocks, wallets, customers),
    and a dict lookup costs less than the parse."""

    def __missing__(self, text: str) -> int:
        value = self[text] = int(text, 16)
        return value


def int_amounts(cursor: AsyncCursor[TupleRow]) -> AsyncCursor[TupleRow]:
    """The cursor, reading `numeric` (`u128` and other amounts) as ints, not Decimals: a
    many-row read skips the Decimal and `from_amount`'s conversion. Text format only (the
    default); psycopg's C loader parses the digits, and refuses a value with a fraction."""
    cursor.adapters.register_loader("numeric", IntLoader)
    return cursor


def page_limit(limit: int) -> int:
    assert 1 <= limit <= ROWS_PER_PAGE_MAX, f"limit {limit} is not in 1..{ROWS_PER_PAGE_MAX}"
    return limit


def equal(**columns: Any) -> list[Condition]:
    """`column = value` for each column given a value (None: that filter is not set). Values
    go as they are: convert ids with `to_uuid_or_none` first."""
    return [(f"{column} = %s", (value,)) for column, value in columns.items() if value is not None]


def resource_of_customer(customer_id: int) -> Condition:
    """The condition that a row's `resource_id` is one of the customer's resources."""
    return ("resource_id IN (SELECT id FROM resources WHERE customer_id = %s)",
            (to_uuid(customer_id),))  # fmt: skip


async def fetch_page(
    conn: Connection,
    select: str,
    conditions: Sequence[Condition],
    row: Callable[[tuple[Any, ...]], T],
    *,
    after: Keyset | None,
    limit: int,
    order: str = "created_at",
) -> tuple[list[T], bool]:
    """A page of `select` (`SELECT ... FROM table`, no WHERE) with every condition, in
    (`order`, id) order after `after`, each row made by `row`: at most `limit` rows, and
    whether more follow.

    One row beyond the limit is read to answer "more", so the last page says so itself and a
    caller never asks for an empty page after it.
    """
    clauses = [sql for sql, _ in conditions]
    params: list[Any] = [p for _, values in conditions for p in values]
    if after is not None:
        clauses.append(f"({order}, id) > (%s, %s)")
        params += [after[0], to_uuid(after[1])]
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    cursor = await conn.execute(
        f"{select}{where} ORDER BY {order}, id LIMIT %s", (*params, page_limit(limit) + 1)
    )
    rows = await cursor.fetchall()
    return [row(r) for r in rows[:limit]], len(rows) > limit
