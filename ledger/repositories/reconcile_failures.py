"""What reconciliation could not finish: one row per object, open until it succeeds or an
operator resolves it (migration 0004)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

from ledger.db import Connection
from ledger.repositories._rows import ROWS_PER_PAGE_DEFAULT, page_limit

_COLUMNS: Final = (
    "kind, object_id, error, attempts, first_failed_at, last_failed_at, resolved_at, resolution"
)
# An error's text is kept up to this many characters.
ERROR_CHARS_MAX: Final = 2000
# The kinds of objects reconciliation works on (the table's CHECK lists the same).
KINDS: Final = frozenset({"credit_type", "wallet", "wallet_change", "budget", "grant"})


class ReconcileFailure(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # credit_type | wallet | wallet_change | budget | grant
    object_id: str
    error: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    resolved_at: datetime | None
    resolution: str | None


def _row(row: tuple[Any, ...]) -> ReconcileFailure:
    kind, object_id, error, attempts, first, last, resolved_at, resolution = row
    return ReconcileFailure(
        kind=kind,
        object_id=object_id,
        error=error,
        attempts=int(attempts),
        first_failed_at=first,
        last_failed_at=last,
        resolved_at=resolved_at,
        resolution=resolution,
    )


async def record(conn: Connection, *, kind: str, object_id: str, error: str) -> None:
    """One more failed attempt on an object (reopened if it had been resolved)."""
    assert kind in KINDS, kind
    await conn.execute(
        "INSERT INTO reconcile_failures (kind, object_id, error) VALUES (%s, %s, %s)"
        " ON CONFLICT (kind, object_id) DO UPDATE SET error = EXCLUDED.error,"
        " attempts = reconcile_failures.attempts + 1, last_failed_at = now(),"
        " resolved_at = NULL, resolution = NULL",
        (kind, object_id, error[:ERROR_CHARS_MAX]),
    )


async def resolve(conn: Connection, *, kind: str, object_id: str, resolution: str) -> bool:
    """Closes an open failure; False when there was none open."""
    cursor = await conn.execute(
        "UPDATE reconcile_failures SET resolved_at = now(), resolution = %s"
        " WHERE kind = %s AND object_id = %s AND resolved_at IS NULL",
        (resolution, kind, object_id),
    )
    return cursor.rowcount == 1


async def list_open(
    conn: Connection, *, limit: int = ROWS_PER_PAGE_DEFAULT
) -> list[ReconcileFailure]:
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM reconcile_failures WHERE resolved_at IS NULL"
        " ORDER BY last_failed_at, kind, object_id LIMIT %s",
        (page_limit(limit),),
    )
    return [_row(row) for row in await cursor.fetchall()]


async def count_open(conn: Connection) -> int:
    cursor = await conn.execute("SELECT count(*) FROM reconcile_failures WHERE resolved_at IS NULL")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def open_keys(conn: Connection) -> set[tuple[str, str]]:
    """(kind, object id) of every open failure (few: each is a row nobody could finish)."""
    cursor = await conn.execute(
        "SELECT kind, object_id FROM reconcile_failures WHERE resolved_at IS NULL"
    )
    return {(kind, object_id) for kind, object_id in await cursor.fetchall()}
