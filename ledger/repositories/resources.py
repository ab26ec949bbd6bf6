"""Resources: a customer's tree (subscription > team > agent, and user, workspace, session).

Invariants (enforced by the schema): a parent belongs to the same customer, a resource is never
its own ancestor. The kinds do not constrain the shape of the tree here; the service does.
"""

from __future__ import annotations

import enum
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
    from_uuid_or_none,
    to_uuid,
    to_uuid_or_none,
)

# The deepest path from a resource to its root that `ancestors` walks: a deeper tree is a bug
# (the spend path of a debit has one leg per wallet and budget on it).
RESOURCE_DEPTH_MAX: Final = 16

_COLUMNS: Final = "id, customer_id, kind, parent_id, external_ref, created_at"


class ResourceKind(enum.StrEnum):
    SUBSCRIPTION = "subscription"
    TEAM = "team"
    AGENT = "agent"
    USER = "user"
    WORKSPACE = "workspace"
    SESSION = "session"


class Resource(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    customer_id: int
    kind: ResourceKind
    parent_id: int | None
    external_ref: str | None
    created_at: datetime


class ResourceTreeTooDeep(RuntimeError):
    """A path to the root is longer than RESOURCE_DEPTH_MAX."""


def _row(row: tuple[Any, ...]) -> Resource:
    id_, customer_id, kind, parent_id, external_ref, created_at = row[:6]
    return Resource(
        id=from_uuid(id_),
        customer_id=from_uuid(customer_id),
        kind=ResourceKind(kind),
        parent_id=from_uuid_or_none(parent_id),
        external_ref=external_ref,
        created_at=created_at,
    )


async def insert_resource(
    conn: Connection,
    *,
    id: int,
    customer_id: int,
    kind: ResourceKind,
    parent_id: int | None = None,
    external_ref: str | None = None,
) -> Resource:
    cursor = await conn.execute(
        "INSERT INTO resources (id, customer_id, kind, parent_id, external_ref)"
        f" VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
        (to_uuid(id), to_uuid(customer_id), kind.value, to_uuid_or_none(parent_id), external_ref),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _row(row)


async def get_resource(conn: Connection, id: int) -> Resource | None:
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM resources WHERE id = %s", (to_uuid(id),))
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def get_resource_by_external_ref(
    conn: Connection, customer_id: int, kind: ResourceKind, external_ref: str
) -> Resource | None:
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM resources"
        " WHERE customer_id = %s AND kind = %s AND external_ref = %s",
        (to_uuid(customer_id), kind.value, external_ref),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_resources(
    conn: Connection,
    *,
    customer_id: int | None = None,
    parent_id: int | None = None,
    kind: ResourceKind | None = None,
    external_ref: str | None = None,
    after: Keyset | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> tuple[list[Resource], bool]:
    """A page of resources with every filter given, in (created_at, id) order, and whether
    more follow; the last one's (created_at, id) is the next page's `after`."""
    conditions = equal(
        customer_id=to_uuid_or_none(customer_id),
        parent_id=to_uuid_or_none(parent_id),
        kind=None if kind is None else kind.value,
        external_ref=external_ref,
    )
    select = f"SELECT {_COLUMNS} FROM resources"
    return await fetch_page(conn, select, conditions, _row, after=after, limit=limit)


async def list_children(conn: Connection, parent_id: int) -> list[Resource]:
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM resources WHERE parent_id = %s ORDER BY id",
        (to_uuid(parent_id),),
    )
    return [_row(row) for row in await cursor.fetchall()]


async def set_parent(conn: Connection, id: int, parent_id: int | None) -> Resource | None:
    """Move a resource under another parent (or make it a root). The schema refuses a parent of
    another customer (ForeignKeyViolation) and a cycle (CheckViolation)."""
    cursor = await conn.execute(
        f"UPDATE resources SET parent_id = %s WHERE id = %s RETURNING {_COLUMNS}",
        (to_uuid_or_none(parent_id), to_uuid(id)),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def path_to_root(conn: Connection, resource_id: int) -> list[Resource]:
    """The resource, then its parent, and so on up to its root; [] if it does not exist.

    One round trip (a recursive CTE), bounded by RESOURCE_DEPTH_MAX.
    """
    cursor = await conn.execute(
        f"""
        WITH RECURSIVE path AS (
            SELECT {_COLUMNS}, 0 AS depth FROM resources WHERE id = %s
            UNION ALL
            SELECT r.id, r.customer_id, r.kind, r.parent_id, r.external_ref, r.created_at,
                   path.depth + 1
            FROM resources r JOIN path ON r.id = path.parent_id
            WHERE path.depth < %s
        )
        SELECT {_COLUMNS}, depth FROM path ORDER BY depth
        """,
        (to_uuid(resource_id), RESOURCE_DEPTH_MAX),
    )
    path = [_row(row) for row in await cursor.fetchall()]
    if path and path[-1].parent_id is not None:
        raise ResourceTreeTooDeep(
            f"resource {resource_id} is more than {RESOURCE_DEPTH_MAX} levels below its root"
        )
    return path


async def ancestors(conn: Connection, resource_id: int) -> list[Resource]:
    """The resource's parent, grandparent, ... up to the root, nearest first (not itself)."""
    return (await path_to_root(conn, resource_id))[1:]


async def list_all_resources(conn: Connection) -> list[Resource]:
    """Every resource, by id, unpaged: for the catalog snapshot only."""
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM resources ORDER BY id")
    return [_row(row) for row in await cursor.fetchall()]


async def tenant_of(conn: Connection, resource_id: int) -> int | None:
    """The tenant of the customer that owns the resource (what the ledger records it under)."""
    cursor = await conn.execute(
        "SELECT c.tenant FROM resources r JOIN customers c ON c.id = r.customer_id WHERE r.id = %s",
        (to_uuid(resource_id),),
    )
    row = await cursor.fetchone()
    return None if row is None else int(row[0])
