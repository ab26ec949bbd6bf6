"""Customers: the tenant (TigerBeetle's user_data_32) and the owner of a tree of resources."""

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
    from_uuid,
    to_uuid,
    to_uuid_or_none,
)

_COLUMNS: Final = "id, tenant, external_ref, name, created_at"


class Customer(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant: int  # a u32, never 0: TigerBeetle's user_data_32 on this customer's events
    external_ref: str | None
    name: str
    created_at: datetime


def _row(row: tuple[Any, ...]) -> Customer:
    id_, tenant, external_ref, name, created_at = row
    return Customer(
        id=from_uuid(id_),
        tenant=int(tenant),
        external_ref=external_ref,
        name=name,
        created_at=created_at,
    )


async def insert_customer(
    conn: Connection, *, id: int, tenant: int, name: str, external_ref: str | None = None
) -> Customer:
    cursor = await conn.execute(
        "INSERT INTO customers (id, tenant, external_ref, name) VALUES (%s, %s, %s, %s)"
        f" RETURNING {_COLUMNS}",
        (to_uuid(id), tenant, external_ref, name),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _row(row)


async def get_customer(conn: Connection, id: int) -> Customer | None:
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM customers WHERE id = %s", (to_uuid(id),))
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def get_customer_by_tenant(conn: Connection, tenant: int) -> Customer | None:
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM customers WHERE tenant = %s", (tenant,))
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def get_customer_by_external_ref(conn: Connection, external_ref: str) -> Customer | None:
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM customers WHERE external_ref = %s", (external_ref,)
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_customers(
    conn: Connection,
    *,
    external_ref: str | None = None,
    customer_id: int | None = None,
    after: Keyset | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> tuple[list[Customer], bool]:
    """A page of customers in (created_at, id) order, and whether more follow; the last one's
    (created_at, id) is the next page's `after`. `customer_id` narrows it to that customer (a
    key bound to one customer lists only its own)."""
    conditions = equal(external_ref=external_ref, id=to_uuid_or_none(customer_id))
    select = f"SELECT {_COLUMNS} FROM customers"
    return await fetch_page(conn, select, conditions, _row, after=after, limit=limit)


async def list_all_customers(conn: Connection) -> list[Customer]:
    """Every customer, by id, unpaged: for the catalog snapshot only."""
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM customers ORDER BY id")
    return [_row(row) for row in await cursor.fetchall()]


async def next_tenant(conn: Connection) -> int:
    """The next free tenant number (the caller locks the table against a concurrent insert)."""
    cursor = await conn.execute("SELECT coalesce(max(tenant), 0) + 1 FROM customers")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])
