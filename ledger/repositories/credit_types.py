"""Credit types: one per TigerBeetle ledger; the id is the ledger number."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

from ledger.db import Connection

_COLUMNS: Final = "id, code, name, asset_scale, created_at"


class CreditType(msgspec.Struct, frozen=True, kw_only=True):
    id: int  # the TigerBeetle ledger number, 1..2^32-1
    code: str
    name: str
    asset_scale: int  # amounts are integers in units of 10^-asset_scale credits
    created_at: datetime


def _row(row: tuple[Any, ...]) -> CreditType:
    id_, code, name, asset_scale, created_at = row
    return CreditType(
        id=int(id_), code=code, name=name, asset_scale=int(asset_scale), created_at=created_at
    )


async def insert_credit_type(
    conn: Connection, *, id: int, code: str, name: str, asset_scale: int
) -> CreditType:
    cursor = await conn.execute(
        "INSERT INTO credit_types (id, code, name, asset_scale) VALUES (%s, %s, %s, %s)"
        f" RETURNING {_COLUMNS}",
        (id, code, name, asset_scale),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _row(row)


async def get_credit_type(conn: Connection, id: int) -> CreditType | None:
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM credit_types WHERE id = %s", (id,))
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def get_credit_type_by_code(conn: Connection, code: str) -> CreditType | None:
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM credit_types WHERE code = %s", (code,))
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_credit_types(conn: Connection) -> list[CreditType]:
    """Every credit type, by id (there are few: one per unit a product sells)."""
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM credit_types ORDER BY id")
    return [_row(row) for row in await cursor.fetchall()]


async def next_id(conn: Connection) -> int:
    """The next free ledger number (a concurrent insert of the same number fails its key)."""
    cursor = await conn.execute("SELECT coalesce(max(id), 0) + 1 FROM credit_types")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])
