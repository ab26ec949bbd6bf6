"""The projection of hot-path movements: one row per operation, written after the fact.

Debits, reservations, settles and releases never wait on Postgres; what Postgres must learn
about them (which wallet, how much, and dimensions such as feature, model, session) is queued
in-process and written here in batches by `insert_movements`. The insert is idempotent on the
operation id, so a batch that is retried after an unknown outcome inserts nothing twice.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
from psycopg.types.json import Jsonb

from ledger.db import Connection
from ledger.repositories._rows import (
    ROWS_PER_PAGE_DEFAULT,
    from_amount,
    from_uuid,
    page_limit,
    to_amount,
    to_uuid,
)

# The most rows one `insert_movements` call writes: one TigerBeetle batch's worth.
MOVEMENTS_PER_BATCH_MAX: Final = 8189

_COLUMNS: Final = (
    "operation_id, kind, wallet_id, resource_id, credit_type_id, amount, dimensions,"
    " effective_at, recorded_at"
)


class MovementKind(enum.StrEnum):
    GRANT = "grant"
    DEBIT = "debit"
    RESERVE = "reserve"
    SETTLE = "settle"
    RELEASE = "release"
    EXPIRE = "expire"
    VOID = "void"
    REFUND = "refund"
    OVERDRAFT = "overdraft"
    REPAY = "repay"


class NewMovement(msgspec.Struct, frozen=True, kw_only=True):
    operation_id: int
    kind: MovementKind
    wallet_id: int
    resource_id: int
    credit_type_id: int
    amount: int
    effective_at: datetime
    dimensions: dict[str, Any] = msgspec.field(default_factory=dict)


class Movement(msgspec.Struct, frozen=True, kw_only=True):
    operation_id: int
    kind: MovementKind
    wallet_id: int
    resource_id: int
    credit_type_id: int
    amount: int
    dimensions: dict[str, Any]
    effective_at: datetime
    recorded_at: datetime


def _row(row: tuple[Any, ...]) -> Movement:
    operation_id, kind, wallet_id, resource_id, credit_type_id, amount = row[:6]
    dimensions, effective_at, recorded_at = row[6:]
    return Movement(
        operation_id=from_uuid(operation_id),
        kind=MovementKind(kind),
        wallet_id=from_uuid(wallet_id),
        resource_id=from_uuid(resource_id),
        credit_type_id=int(credit_type_id),
        amount=from_amount(amount),
        dimensions=dimensions,
        effective_at=effective_at,
        recorded_at=recorded_at,
    )


async def insert_movements(conn: Connection, rows: Sequence[NewMovement]) -> int:
    """Insert a batch (at most MOVEMENTS_PER_BATCH_MAX); operations already recorded are
    skipped. Returns how many rows were new.

    One pipelined `executemany`: a single round trip's worth of latency for the whole batch.
    """
    assert len(rows) <= MOVEMENTS_PER_BATCH_MAX, f"{len(rows)} movements in one batch"
    if not rows:
        return 0
    async with conn.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO movements (operation_id, kind, wallet_id, resource_id, credit_type_id,"
            " amount, dimensions, effective_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (operation_id) DO NOTHING",
            [
                (
                    to_uuid(row.operation_id),
                    row.kind.value,
                    to_uuid(row.wallet_id),
                    to_uuid(row.resource_id),
                    row.credit_type_id,
                    to_amount(row.amount),
                    Jsonb(row.dimensions),
                    row.effective_at,
                )
                for row in rows
            ],
        )
        return cursor.rowcount


async def get_movement(conn: Connection, operation_id: int) -> Movement | None:
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM movements WHERE operation_id = %s", (to_uuid(operation_id),)
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_movements_for_wallet(
    conn: Connection,
    wallet_id: int,
    *,
    before: tuple[datetime, int] | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> list[Movement]:
    """A page of a wallet's movements, newest first by (effective_at, operation_id).

    For the next page pass `before=(last.effective_at, last.operation_id)` of this one.
    """
    if before is None:
        cursor = await conn.execute(
            f"SELECT {_COLUMNS} FROM movements WHERE wallet_id = %s"
            " ORDER BY effective_at DESC, operation_id DESC LIMIT %s",
            (to_uuid(wallet_id), page_limit(limit)),
        )
    else:
        effective_at, operation_id = before
        cursor = await conn.execute(
            f"SELECT {_COLUMNS} FROM movements WHERE wallet_id = %s"
            " AND (effective_at, operation_id) < (%s, %s)"
            " ORDER BY effective_at DESC, operation_id DESC LIMIT %s",
            (to_uuid(wallet_id), effective_at, to_uuid(operation_id), page_limit(limit)),
        )
    return [_row(row) for row in await cursor.fetchall()]
