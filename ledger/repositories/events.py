"""The outbox of events (migration 0011): what webhooks deliver.

Invariants:
- An event is emitted in the transaction of what caused it; its id derives from its type and a
  key naming the cause (`event_id`), so emitting it twice (a replayed tick, a crash between the
  cause and the next step) inserts it once: `emit` says whether this call inserted it.
- Events are never changed except `dispatched`, set once they are fanned out to endpoints.
- `type` is one of EVENT_TYPES (a stable, documented list: clients switch on it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec
from psycopg.types.json import Jsonb

from ledger.db import Connection
from ledger.ids import derive_id
from ledger.repositories._rows import from_uuid, from_uuid_or_none, to_uuid, to_uuid_or_none

# Every event type, with what it means (ledger/README.md, "Events", says the same).
EVENT_TYPES: Final = {
    "balance.low": "a wallet's available credits fell below one of its thresholds",
    "balance.depleted": "a wallet's available credits reached zero",
    "grant.expiring": "a block with credits left expires within the notice window",
    "grant.expired": "a block's unused credits expired (breakage)",
    "reservation.timed_out": "a reservation was released by its timeout, unsettled",
    "budget.threshold_reached": "a budget's period usage reached one of its thresholds",
    "budget.exceeded": "a budget's period cap is used up: spends it covers are refused",
    "overdraft.opened": "a wallet went into deficit through its overdraft",
    "overdraft.repaid": "a wallet's deficit was repaid in full",
    "allocation.issued": "a plan issued a subscription's allocation for a period",
    "top_up.issued": "an automatic top-up issued a paid grant: collect its payment",
}

_COLUMNS: Final = "id, seq, type, customer_id, wallet_id, occurred_at, created_at, data"


class Event(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    seq: int
    type: str
    customer_id: int | None
    wallet_id: int | None
    occurred_at: datetime
    created_at: datetime
    data: dict[str, Any]


def _row(row: tuple[Any, ...]) -> Event:
    id_, seq, type_, customer_id, wallet_id, occurred_at, created_at, data = row
    return Event(
        id=from_uuid(id_),
        seq=int(seq),
        type=type_,
        customer_id=from_uuid_or_none(customer_id),
        wallet_id=from_uuid_or_none(wallet_id),
        occurred_at=occurred_at,
        created_at=created_at,
        data=data,
    )


def event_id(type_: str, *key: int | str) -> int:
    """The id of the event of `type_` caused by what `key` names (the same cause, the same
    id: the outbox's dedupe)."""
    return derive_id("event", type_, *key)


async def emit(
    conn: Connection,
    *,
    type_: str,
    key: tuple[int | str, ...],
    occurred_at: datetime,
    data: dict[str, Any],
    customer_id: int | None = None,
    wallet_id: int | None = None,
) -> bool:
    """Writes the event (in the caller's transaction); False when it was already written."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    cursor = await conn.execute(
        "INSERT INTO events (id, type, customer_id, wallet_id, occurred_at, data)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (
            to_uuid(event_id(type_, *key)),
            type_,
            to_uuid_or_none(customer_id),
            to_uuid_or_none(wallet_id),
            occurred_at,
            Jsonb(data),
        ),
    )
    return cursor.rowcount == 1


async def get_event(conn: Connection, id_: int) -> Event | None:
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM events WHERE id = %s", (to_uuid(id_),))
    row = await cursor.fetchone()
    return _row(row) if row else None


async def undispatched(conn: Connection, limit: int) -> list[Event]:
    """The oldest events not fanned out yet, locked (SKIP LOCKED: two dispatchers share the
    work instead of waiting on each other)."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE NOT dispatched ORDER BY seq LIMIT %s"
        " FOR UPDATE SKIP LOCKED",
        (limit,),
    )
    return [_row(r) for r in await cursor.fetchall()]


async def mark_dispatched(conn: Connection, ids: list[int]) -> None:
    await conn.execute(
        "UPDATE events SET dispatched = true WHERE id = ANY(%s)", ([to_uuid(i) for i in ids],)
    )
