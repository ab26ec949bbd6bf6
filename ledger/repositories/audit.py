"""The audit log of admin actions: who, when, what, why. Append-only.

The schema refuses UPDATE, DELETE and TRUNCATE of `audit_log` (a trigger raises), so this
module only appends and reads. Write the entry in the same transaction as the change it records:
then there is never a change without its entry, nor an entry without its change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec
from psycopg.types.json import Jsonb

from ledger.db import Connection
from ledger.repositories._rows import (
    ROWS_PER_PAGE_DEFAULT,
    from_uuid_or_none,
    page_limit,
    to_uuid,
    to_uuid_or_none,
)

_COLUMNS: Final = "id, at, actor, action, object_type, object_id, reason, details"


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int  # from a sequence at insert time: a later commit may carry a smaller id
    at: datetime
    actor: str
    action: str
    object_type: str | None
    object_id: int | None
    reason: str | None
    details: dict[str, Any]


def _row(row: tuple[Any, ...]) -> AuditEntry:
    id_, at, actor, action, object_type, object_id, reason, details = row
    return AuditEntry(
        id=int(id_),
        at=at,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=from_uuid_or_none(object_id),
        reason=reason,
        details=details,
    )


async def append(
    conn: Connection,
    *,
    actor: str,
    action: str,
    object_type: str | None = None,
    object_id: int | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Record an admin action. `details` is JSON: put ids and amounts there as strings."""
    cursor = await conn.execute(
        "INSERT INTO audit_log (actor, action, object_type, object_id, reason, details)"
        f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
        (
            actor,
            action,
            object_type,
            to_uuid_or_none(object_id),
            reason,
            Jsonb(details if details is not None else {}),
        ),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _row(row)


async def list_for_object(
    conn: Connection, object_type: str, object_id: int, *, limit: int = ROWS_PER_PAGE_DEFAULT
) -> list[AuditEntry]:
    """The latest entries about one object, newest first."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM audit_log WHERE object_type = %s AND object_id = %s"
        " ORDER BY id DESC LIMIT %s",
        (object_type, to_uuid(object_id), page_limit(limit)),
    )
    return [_row(row) for row in await cursor.fetchall()]


async def list_entries(
    conn: Connection, *, after_id: int = 0, limit: int = ROWS_PER_PAGE_DEFAULT
) -> list[AuditEntry]:
    """A page of the log, oldest first; the last id of a page is the next `after_id`."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM audit_log WHERE id > %s ORDER BY id LIMIT %s",
        (after_id, page_limit(limit)),
    )
    return [_row(row) for row in await cursor.fetchall()]
