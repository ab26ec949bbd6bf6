"""Idempotency records of admin operations: (tenant, key) -> request hash and stored outcome.

The protocol, for an admin operation with a caller's key:

1. `begin(conn, ...)`. None: this call owns the key; do the work, then `complete(...)` with the
   outcome. A record: the key was seen before; compare it with the request
   (`record.matches(operation, request_hash)`): a different request under the same key is a
   conflict; a completed record's stored outcome is the answer to replay; an uncompleted record
   is an attempt in progress, or one that stopped between `begin` and `complete` (the work is
   idempotent on its derived ids, so it may be resumed). `complete` stores an outcome once:
   None from it means another attempt stored its outcome first, and that one is the answer.
2. `begin` waits while another transaction holds an uncommitted `begin` of the same key, then
   sees its outcome: two concurrent first attempts never both own the key. This relies on the
   default READ COMMITTED isolation.

The hot path does not use this table: its idempotency rides on TigerBeetle (ledger/README.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec
from psycopg.types.json import Jsonb

from ledger.db import Connection
from ledger.ids import idempotency_key_bytes
from ledger.limits import U32_MAX

_COLUMNS: Final = (
    "tenant, key, operation, request_hash, status_code, response, created_at, completed_at"
)


class IdempotencyRecord(msgspec.Struct, frozen=True, kw_only=True):
    tenant: int
    key: str
    operation: str
    request_hash: bytes
    status_code: int | None  # None until completed
    response: Any  # the stored outcome (JSON), None until completed
    created_at: datetime
    completed_at: datetime | None

    @property
    def completed(self) -> bool:
        return self.completed_at is not None

    def matches(self, operation: str, request_hash: bytes) -> bool:
        """Whether this record is of the same request (else reusing the key is a conflict)."""
        return self.operation == operation and self.request_hash == request_hash


def _row(row: tuple[Any, ...]) -> IdempotencyRecord:
    tenant, key, operation, request_hash, status_code, response, created_at, completed_at = row
    return IdempotencyRecord(
        tenant=int(tenant),
        key=key,
        operation=operation,
        request_hash=bytes(request_hash),
        status_code=None if status_code is None else int(status_code),
        response=response,
        created_at=created_at,
        completed_at=completed_at,
    )


def _check_key(tenant: int, key: str) -> None:
    assert 0 <= tenant <= U32_MAX, tenant
    idempotency_key_bytes(key)  # ValueError (an operating error) if the key is not valid


async def begin(
    conn: Connection, *, tenant: int, key: str, operation: str, request_hash: bytes
) -> IdempotencyRecord | None:
    """Claim (tenant, key) for this request: None if claimed now, else the existing record."""
    _check_key(tenant, key)
    cursor = await conn.execute(
        "INSERT INTO idempotency_records (tenant, key, operation, request_hash)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant, key) DO NOTHING",
        (tenant, key, operation, request_hash),
    )
    if cursor.rowcount == 1:
        return None
    existing = await get(conn, tenant=tenant, key=key)
    assert existing is not None, "a conflicting idempotency record vanished (deleted meanwhile?)"
    return existing


async def complete(
    conn: Connection, *, tenant: int, key: str, status_code: int, response: Any
) -> IdempotencyRecord | None:
    """Store the outcome of the claimed (tenant, key); None if it is not claimed and open."""
    cursor = await conn.execute(
        "UPDATE idempotency_records SET status_code = %s, response = %s, completed_at = now()"
        " WHERE tenant = %s AND key = %s AND completed_at IS NULL"
        f" RETURNING {_COLUMNS}",
        (status_code, Jsonb(response), tenant, key),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def get(conn: Connection, *, tenant: int, key: str) -> IdempotencyRecord | None:
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM idempotency_records WHERE tenant = %s AND key = %s",
        (tenant, key),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def delete_created_before(conn: Connection, created_before: datetime, *, limit: int) -> int:
    """Forget up to `limit` records created before `created_before` (retention); the count."""
    assert limit >= 1
    cursor = await conn.execute(
        "DELETE FROM idempotency_records WHERE (tenant, key) IN ("
        " SELECT tenant, key FROM idempotency_records WHERE created_at < %s LIMIT %s)",
        (created_before, limit),
    )
    return cursor.rowcount
