"""The price catalog: credits per unit of a feature, per credit type, with its history.

Invariants (migration 0006): a price is never changed in place. Each new price of (feature,
credit type) is a row of its own, in force from its `effective_at` until the next row's; the
price in force at t is the row with the latest `effective_at` <= t. Rows are neither updated
nor deleted, so a row read once stays true. Amounts are integers in units of the credit type's
asset scale.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

from ledger.db import Connection
from ledger.repositories._rows import (
    ROWS_PER_PAGE_DEFAULT,
    Keyset,
    equal,
    fetch_page,
    from_amount,
    from_uuid,
    to_amount,
    to_uuid,
)

_COLUMNS: Final = "id, feature, credit_type_id, credits_per_unit, effective_at, created_at"


class Price(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    feature: str
    credit_type_id: int
    credits_per_unit: int
    effective_at: datetime  # in force from then until the next price of its feature
    created_at: datetime


def _row(row: tuple[Any, ...]) -> Price:
    id_, feature, credit_type_id, credits_per_unit, effective_at, created_at = row
    return Price(
        id=from_uuid(id_),
        feature=feature,
        credit_type_id=int(credit_type_id),
        credits_per_unit=from_amount(credits_per_unit),
        effective_at=effective_at,
        created_at=created_at,
    )


async def insert_price(
    conn: Connection,
    *,
    id: int,
    feature: str,
    credit_type_id: int,
    credits_per_unit: int,
    effective_at: datetime,
) -> Price:
    """A new entry of the feature's history (UniqueViolation if one starts at the same time)."""
    cursor = await conn.execute(
        "INSERT INTO prices (id, feature, credit_type_id, credits_per_unit, effective_at)"
        f" VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
        (to_uuid(id), feature, credit_type_id, to_amount(credits_per_unit), effective_at),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _row(row)


async def get_price(conn: Connection, id: int) -> Price | None:
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM prices WHERE id = %s", (to_uuid(id),))
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def price_at(
    conn: Connection, feature: str, credit_type_id: int, at: datetime
) -> Price | None:
    """The price of (feature, credit type) in force at `at`, if any."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM prices WHERE feature = %s AND credit_type_id = %s"
        " AND effective_at <= %s ORDER BY effective_at DESC LIMIT 1",
        (feature, credit_type_id, at),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_prices(
    conn: Connection,
    *,
    feature: str | None = None,
    credit_type_id: int | None = None,
    after: Keyset | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> tuple[list[Price], bool]:
    """A page of prices in (effective_at, id) order (with a feature and a credit type: that
    price's history), and whether more follow; the last one's (effective_at, id) is the next
    page's `after`."""
    conditions = equal(feature=feature, credit_type_id=credit_type_id)
    select = f"SELECT {_COLUMNS} FROM prices"
    return await fetch_page(
        conn, select, conditions, _row, after=after, limit=limit, order="effective_at"
    )


async def list_all_prices(conn: Connection) -> list[Price]:
    """Every entry of every price, by feature, credit type and effective_at, unpaged: for the
    catalog snapshot only (a catalog of features and their few changes, not of usage: small)."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM prices ORDER BY feature, credit_type_id, effective_at"
    )
    return [_row(row) for row in await cursor.fetchall()]
