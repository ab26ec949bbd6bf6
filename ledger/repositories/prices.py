"""The price catalog: credits per unit of a feature, per credit type.

A price changes in place (`upsert_price`); the audit log keeps what it was. Amounts are integers
in units of the credit type's asset scale.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

from ledger.db import Connection
from ledger.repositories._rows import from_amount, from_uuid, to_amount, to_uuid

_COLUMNS: Final = "id, feature, credit_type_id, credits_per_unit, created_at, updated_at"


class Price(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    feature: str
    credit_type_id: int
    credits_per_unit: int
    created_at: datetime
    updated_at: datetime


def _row(row: tuple[Any, ...]) -> Price:
    id_, feature, credit_type_id, credits_per_unit, created_at, updated_at = row
    return Price(
        id=from_uuid(id_),
        feature=feature,
        credit_type_id=int(credit_type_id),
        credits_per_unit=from_amount(credits_per_unit),
        created_at=created_at,
        updated_at=updated_at,
    )


async def upsert_price(
    conn: Connection, *, id: int, feature: str, credit_type_id: int, credits_per_unit: int
) -> Price:
    """Set the price of (feature, credit type). `id` names a new price; an existing one keeps
    its id and gets the new amount."""
    cursor = await conn.execute(
        "INSERT INTO prices (id, feature, credit_type_id, credits_per_unit)"
        " VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (feature, credit_type_id) DO UPDATE"
        " SET credits_per_unit = EXCLUDED.credits_per_unit, updated_at = now()"
        f" RETURNING {_COLUMNS}",
        (to_uuid(id), feature, credit_type_id, to_amount(credits_per_unit)),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _row(row)


async def get_price(conn: Connection, feature: str, credit_type_id: int) -> Price | None:
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM prices WHERE feature = %s AND credit_type_id = %s",
        (feature, credit_type_id),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_prices(conn: Connection) -> list[Price]:
    """Every price, by feature and credit type (a catalog of features, not of usage: small)."""
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM prices ORDER BY feature, credit_type_id")
    return [_row(row) for row in await cursor.fetchall()]


async def delete_price(conn: Connection, feature: str, credit_type_id: int) -> bool:
    """Remove a price; True if there was one."""
    cursor = await conn.execute(
        "DELETE FROM prices WHERE feature = %s AND credit_type_id = %s",
        (feature, credit_type_id),
    )
    return cursor.rowcount == 1
