"""Budgets: a spending cap on a resource, per credit type and period.

Invariants (enforced by the schema): cap > 0; at most one active budget per (resource, credit
type, period). A budget is deactivated, never deleted: its TigerBeetle accounts (one per period)
keep its id.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
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
    resource_of_customer,
    to_amount,
    to_uuid,
    to_uuid_or_none,
    uuids,
)

_COLUMNS: Final = "id, resource_id, credit_type_id, period, cap, created_at, active"


class BudgetPeriod(enum.StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    LIFETIME = "lifetime"


class Budget(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    resource_id: int
    credit_type_id: int
    period: BudgetPeriod
    cap: int
    created_at: datetime
    active: bool


def _row(row: tuple[Any, ...]) -> Budget:
    id_, resource_id, credit_type_id, period, cap, created_at, active = row
    return Budget(
        id=from_uuid(id_),
        resource_id=from_uuid(resource_id),
        credit_type_id=int(credit_type_id),
        period=BudgetPeriod(period),
        cap=from_amount(cap),
        created_at=created_at,
        active=bool(active),
    )


async def insert_budget(
    conn: Connection,
    *,
    id: int,
    resource_id: int,
    credit_type_id: int,
    period: BudgetPeriod,
    cap: int,
) -> Budget:
    cursor = await conn.execute(
        "INSERT INTO budgets (id, resource_id, credit_type_id, period, cap)"
        f" VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
        (to_uuid(id), to_uuid(resource_id), credit_type_id, period.value, to_amount(cap)),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _row(row)


async def get_budget(conn: Connection, id: int) -> Budget | None:
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM budgets WHERE id = %s", (to_uuid(id),))
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_budgets_for_resources(
    conn: Connection, resource_ids: Collection[int], *, active_only: bool = True
) -> list[Budget]:
    """The budgets of these resources (only the active ones, by default), by id."""
    active_clause = " AND active" if active_only else ""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM budgets WHERE resource_id = ANY(%s){active_clause} ORDER BY id",
        (uuids(resource_ids),),
    )
    return [_row(row) for row in await cursor.fetchall()]


async def list_budgets(
    conn: Connection,
    *,
    resource_id: int | None = None,
    customer_id: int | None = None,
    credit_type_id: int | None = None,
    active: bool | None = None,
    after: Keyset | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> tuple[list[Budget], bool]:
    """A page of budgets with every filter given (`active` None: removed ones too), in
    (created_at, id) order, and whether more follow."""
    conditions = equal(
        resource_id=to_uuid_or_none(resource_id), credit_type_id=credit_type_id, active=active
    )
    if customer_id is not None:
        conditions.append(resource_of_customer(customer_id))
    select = f"SELECT {_COLUMNS} FROM budgets"
    return await fetch_page(conn, select, conditions, _row, after=after, limit=limit)


async def lock_budget(conn: Connection, id: int) -> Budget | None:
    """The budget, locked (FOR UPDATE) until the caller's transaction ends: changes of its cap
    and their ledger side run one at a time."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM budgets WHERE id = %s FOR UPDATE", (to_uuid(id),)
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def set_budget_cap(conn: Connection, id: int, cap: int) -> Budget | None:
    cursor = await conn.execute(
        f"UPDATE budgets SET cap = %s WHERE id = %s RETURNING {_COLUMNS}",
        (to_amount(cap), to_uuid(id)),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def set_budget_active(conn: Connection, id: int, active: bool) -> Budget | None:
    cursor = await conn.execute(
        f"UPDATE budgets SET active = %s WHERE id = %s RETURNING {_COLUMNS}",
        (active, to_uuid(id)),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_all_active_budgets(conn: Connection) -> list[Budget]:
    """Every active budget, by id, unpaged: for the catalog snapshot only."""
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM budgets WHERE active ORDER BY id")
    return [_row(row) for row in await cursor.fetchall()]
