"""The projection of hot-path movements: one row per operation, written after the fact.

Debits, reservations, settles and releases never wait on Postgres; what Postgres must learn
about them (which wallet, how much, and dimensions such as feature, model, session) is queued
in-process and written here in batches by `insert_movements`. The insert is idempotent on the
operation id, so a batch that is retried after an unknown outcome inserts nothing twice.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
from psycopg.pq import TransactionStatus

from ledger.db import Connection
from ledger.limits import U128_MAX
from ledger.repositories._rows import (
    ROWS_PER_PAGE_DEFAULT,
    from_amount,
    from_uuid,
    page_limit,
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
    # ns since the Unix epoch, as the ledger keeps it (a datetime per movement cost the hot
    # path more than the rest of the record); stored to the microsecond, as Postgres keeps it.
    effective_at_ns: int
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


_STAGED: Final = (
    "operation_id, kind, wallet_id, resource_id, credit_type_id, amount, dimensions, effective_us"
)
_COLUMNS_NEW: Final = (
    "operation_id, kind, wallet_id, resource_id, credit_type_id, amount, dimensions, effective_at"
)
_STAGING_TABLE: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS movements_in (operation_id uuid, kind text, wallet_id uuid,"
    " resource_id uuid, credit_type_id bigint, amount u128, dimensions jsonb, effective_us bigint)"
    " ON COMMIT DELETE ROWS"
)
# Connections that have the staging table (created once per connection, emptied at commit).
_STAGING_READY: weakref.WeakSet[Connection] = weakref.WeakSet()
_FROM_STAGED: Final = (
    "operation_id, kind, wallet_id, resource_id, credit_type_id, amount, dimensions,"
    " timestamptz 'epoch' + effective_us * interval '1 microsecond'"
)


async def insert_movements(conn: Connection, rows: Sequence[NewMovement]) -> int:
    """Insert a batch (at most MOVEMENTS_PER_BATCH_MAX); operations already recorded are
    skipped. Returns how many rows were new.

    The rows are COPYed into a per-connection temporary table, then moved with one
    `INSERT ... SELECT ... ON CONFLICT DO NOTHING` (COPY itself cannot skip duplicates): about
    five times the rows per second of a pipelined `executemany`, in one transaction.
    """
    assert len(rows) <= MOVEMENTS_PER_BATCH_MAX, f"{len(rows)} movements in one batch"
    if not rows:
        return 0
    if conn not in _STAGING_READY and conn.info.transaction_status is TransactionStatus.IDLE:
        # Created and committed once: a temporary table lives as long as its connection.
        async with conn.transaction():
            await conn.execute(_STAGING_TABLE)
        _STAGING_READY.add(conn)
    async with conn.transaction():
        if conn not in _STAGING_READY:  # inside the caller's transaction, which may roll back
            await conn.execute(_STAGING_TABLE)
        async with conn.cursor() as cursor:
            async with cursor.copy(f"COPY movements_in ({_STAGED}) FROM STDIN") as copy:
                await copy.write(_copy_text(rows))
            await cursor.execute(
                f"INSERT INTO movements ({_COLUMNS_NEW}) SELECT {_FROM_STAGED} FROM movements_in"
                " ON CONFLICT (operation_id) DO NOTHING"
            )
            return cursor.rowcount


def _copy_text(rows: Sequence[NewMovement]) -> bytes:
    """The rows in COPY's text format, written here rather than by psycopg's per-value
    adapters (a third of the CPU per row): ids as 32 hex digits (a uuid's bytes), amounts and
    numbers as decimals, dimensions as JSON, the time in microseconds since the epoch. JSON
    escapes every control character, so of COPY's special characters only the backslash can
    occur, and is doubled."""
    lines = []
    encode = msgspec.json.encode
    for row in rows:
        ids = (row.operation_id, row.wallet_id, row.resource_id)
        assert all(0 <= i <= U128_MAX for i in ids), ids
        assert isinstance(row.amount, int) and isinstance(row.credit_type_id, int), row
        dimensions = encode(row.dimensions).decode() if row.dimensions else "{}"
        if "\\" in dimensions:
            dimensions = dimensions.replace("\\", "\\\\")
        lines.append(
            f"{row.operation_id:032x}\t{row.kind.value}\t{row.wallet_id:032x}\t"
            f"{row.resource_id:032x}\t{row.credit_type_id}\t{row.amount}\t{dimensions}\t"
            f"{row.effective_at_ns // 1000}\n"
        )
    return "".join(lines).encode()


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
