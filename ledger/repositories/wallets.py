"""Wallets: one per (resource, credit type), with its overdraft policy and fall-through.

Invariants (enforced by the schema): `overdraft_limit` is 0 unless the mode is `soft`, and
positive when it is; a `soft` or `unbounded` wallet names its overdraft account.
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
    from_uuid_or_none,
    resource_of_customer,
    to_amount,
    to_uuid,
    to_uuid_or_none,
    uuids,
)

_COLUMNS: Final = (
    "id, resource_id, credit_type_id, overdraft_mode, overdraft_limit, overdraft_account_id,"
    " fall_through, created_at"
)


class OverdraftMode(enum.StrEnum):
    HARD = "hard"  # never below zero
    SOFT = "soft"  # down to -overdraft_limit
    UNBOUNDED = "unbounded"  # no floor


class Wallet(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    resource_id: int
    credit_type_id: int
    overdraft_mode: OverdraftMode
    overdraft_limit: int
    overdraft_account_id: int | None
    fall_through: bool  # spend falls through to the parent's wallet when this one is exhausted
    created_at: datetime


def _row(row: tuple[Any, ...]) -> Wallet:
    (id_, resource_id, credit_type_id, mode, limit, account_id, fall_through, created_at) = row
    return Wallet(
        id=from_uuid(id_),
        resource_id=from_uuid(resource_id),
        credit_type_id=int(credit_type_id),
        overdraft_mode=OverdraftMode(mode),
        overdraft_limit=from_amount(limit),
        overdraft_account_id=from_uuid_or_none(account_id),
        fall_through=bool(fall_through),
        created_at=created_at,
    )


async def insert_wallet(
    conn: Connection,
    *,
    id: int,
    resource_id: int,
    credit_type_id: int,
    overdraft_mode: OverdraftMode = OverdraftMode.HARD,
    overdraft_limit: int = 0,
    overdraft_account_id: int | None = None,
    fall_through: bool = False,
) -> Wallet:
    cursor = await conn.execute(
        "INSERT INTO wallets (id, resource_id, credit_type_id, overdraft_mode, overdraft_limit,"
        " overdraft_account_id, fall_through)"
        f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
        (
            to_uuid(id),
            to_uuid(resource_id),
            credit_type_id,
            overdraft_mode.value,
            to_amount(overdraft_limit),
            to_uuid_or_none(overdraft_account_id),
            fall_through,
        ),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _row(row)


async def get_wallet(conn: Connection, id: int) -> Wallet | None:
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM wallets WHERE id = %s", (to_uuid(id),))
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def lock_wallet(conn: Connection, id: int) -> Wallet | None:
    """The wallet, locked (FOR UPDATE) until the caller's transaction ends.

    Grant issuance on one wallet is serialized this way (ledger/README.md, "Overdraft": the
    deficit a repay reads can then never be overstated).
    """
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM wallets WHERE id = %s FOR UPDATE", (to_uuid(id),)
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def get_wallet_by_resource(
    conn: Connection, resource_id: int, credit_type_id: int
) -> Wallet | None:
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM wallets WHERE resource_id = %s AND credit_type_id = %s",
        (to_uuid(resource_id), credit_type_id),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_wallets_for_resources(
    conn: Connection, resource_ids: Collection[int], *, credit_type_id: int | None = None
) -> list[Wallet]:
    """The wallets of these resources (of one credit type, if given), by id."""
    if credit_type_id is None:
        cursor = await conn.execute(
            f"SELECT {_COLUMNS} FROM wallets WHERE resource_id = ANY(%s) ORDER BY id",
            (uuids(resource_ids),),
        )
    else:
        cursor = await conn.execute(
            f"SELECT {_COLUMNS} FROM wallets WHERE resource_id = ANY(%s) AND credit_type_id = %s"
            " ORDER BY id",
            (uuids(resource_ids), credit_type_id),
        )
    return [_row(row) for row in await cursor.fetchall()]


async def list_wallets(
    conn: Connection,
    *,
    resource_id: int | None = None,
    customer_id: int | None = None,
    credit_type_id: int | None = None,
    after: Keyset | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> tuple[list[Wallet], bool]:
    """A page of wallets with every filter given (a customer's: those of its resources), in
    (created_at, id) order, and whether more follow."""
    conditions = equal(resource_id=to_uuid_or_none(resource_id), credit_type_id=credit_type_id)
    if customer_id is not None:
        conditions.append(resource_of_customer(customer_id))
    select = f"SELECT {_COLUMNS} FROM wallets"
    return await fetch_page(conn, select, conditions, _row, after=after, limit=limit)


async def update_wallet_policy(
    conn: Connection,
    id: int,
    *,
    overdraft_mode: OverdraftMode,
    overdraft_limit: int,
    overdraft_account_id: int | None,
    fall_through: bool,
) -> Wallet | None:
    """Replace the wallet's overdraft policy and fall-through; None if there is no such wallet."""
    cursor = await conn.execute(
        "UPDATE wallets SET overdraft_mode = %s, overdraft_limit = %s,"
        " overdraft_account_id = %s, fall_through = %s"
        f" WHERE id = %s RETURNING {_COLUMNS}",
        (
            overdraft_mode.value,
            to_amount(overdraft_limit),
            to_uuid_or_none(overdraft_account_id),
            fall_through,
            to_uuid(id),
        ),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_all_wallets(conn: Connection) -> list[Wallet]:
    """Every wallet, by id, unpaged: for the catalog snapshot only."""
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM wallets ORDER BY id")
    return [_row(row) for row in await cursor.fetchall()]
