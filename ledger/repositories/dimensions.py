"""The dictionary of dimension sets: what the id a spend's chain carries means.

A set's id is a hash of the set (`ledger.ids.dimension_set_id`), so writing a set twice writes
one row, and every process derives the same id without asking. The row is committed before the
first spend that carries its id (wallets/dimensions.py), so a spend the engine acknowledged has
its dimensions in Postgres whatever process dies afterwards.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final

from psycopg.types.json import Jsonb

from ledger.db import Connection
from ledger.repositories._rows import from_uuid, to_uuid, uuids

# The most sets one `insert_dimension_sets` call writes (a batch of spends has at most this many).
SETS_PER_CALL_MAX: Final = 10_000


async def insert_dimension_sets(
    conn: Connection, sets: Sequence[tuple[int, Mapping[str, str]]]
) -> None:
    """Writes the sets (id, dimensions) that are not there yet, and commits."""
    assert len(sets) <= SETS_PER_CALL_MAX, len(sets)
    if not sets:
        return
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO dimension_sets (id, dimensions)"
            " SELECT * FROM unnest(%s::uuid[], %s::jsonb[]) ON CONFLICT (id) DO NOTHING",
            (
                [to_uuid(set_id) for set_id, _ in sets],
                [Jsonb(dict(dimensions)) for _, dimensions in sets],
            ),
        )


async def get_dimension_sets(conn: Connection, ids: Collection[int]) -> dict[int, dict[str, str]]:
    """The dimensions of each set id found (ids not found are left out)."""
    wanted = [i for i in ids if i]
    if not wanted:
        return {}
    cursor = await conn.execute(
        "SELECT id, dimensions FROM dimension_sets WHERE id = ANY(%s)", (uuids(wanted),)
    )
    return {from_uuid(row[0]): row[1] for row in await cursor.fetchall()}
