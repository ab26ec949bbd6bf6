"""Changes of a wallet's overdraft policy: recorded 'pending' before the ledger moves, then
'applied' or 'refused' (migration 0007 states the order of the dual write).

Invariants (enforced by the schema): a change asks for a whole policy that a wallet row could
hold (a positive limit with, and only with, 'soft'); at most one change of a wallet is pending;
a finished change has its time, a refused one its reason.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Final

import msgspec

from ledger.db import Connection
from ledger.repositories._rows import (
    ROWS_PER_PAGE_DEFAULT,
    from_amount,
    from_uuid,
    page_limit,
    to_amount,
    to_uuid,
)
from ledger.repositories.wallets import OverdraftMode

_COLUMNS: Final = (
    "id, wallet_id, overdraft_mode, overdraft_limit, fall_through, state, actor, refusal,"
    " created_at, finished_at"
)


class ChangeState(enum.StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    REFUSED = "refused"


class WalletChange(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    wallet_id: int
    overdraft_mode: OverdraftMode
    overdraft_limit: int
    fall_through: bool
    state: ChangeState
    actor: str
    refusal: str | None
    created_at: datetime
    finished_at: datetime | None


def _row(row: tuple[Any, ...]) -> WalletChange:
    id_, wallet_id, mode, limit, fall_through, state, actor, refusal = row[:8]
    return WalletChange(
        id=from_uuid(id_),
        wallet_id=from_uuid(wallet_id),
        overdraft_mode=OverdraftMode(mode),
        overdraft_limit=from_amount(limit),
        fall_through=bool(fall_through),
        state=ChangeState(state),
        actor=actor,
        refusal=refusal,
        created_at=row[8],
        finished_at=row[9],
    )


async def insert_change(
    conn: Connection,
    *,
    id: int,
    wallet_id: int,
    overdraft_mode: OverdraftMode,
    overdraft_limit: int,
    fall_through: bool,
    actor: str,
) -> WalletChange:
    """A pending change (UniqueViolation while another change of the wallet is pending)."""
    cursor = await conn.execute(
        "INSERT INTO wallet_changes (id, wallet_id, overdraft_mode, overdraft_limit,"
        f" fall_through, actor) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
        (
            to_uuid(id),
            to_uuid(wallet_id),
            overdraft_mode.value,
            to_amount(overdraft_limit),
            fall_through,
            actor,
        ),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _row(row)


async def get_change(conn: Connection, id: int) -> WalletChange | None:
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM wallet_changes WHERE id = %s", (to_uuid(id),)
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def pending_change_of(conn: Connection, wallet_id: int) -> WalletChange | None:
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM wallet_changes WHERE wallet_id = %s AND state = 'pending'",
        (to_uuid(wallet_id),),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def finish_change(
    conn: Connection, id: int, state: ChangeState, *, refusal: str | None = None
) -> WalletChange | None:
    """Mark a pending change applied or refused; None if it is not pending (any more)."""
    assert state is not ChangeState.PENDING
    assert (state is ChangeState.REFUSED) == (refusal is not None)
    cursor = await conn.execute(
        "UPDATE wallet_changes SET state = %s, refusal = %s, finished_at = now()"
        f" WHERE id = %s AND state = 'pending' RETURNING {_COLUMNS}",
        (state.value, refusal, to_uuid(id)),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_pending_changes(
    conn: Connection, created_before: datetime, *, limit: int = ROWS_PER_PAGE_DEFAULT
) -> list[WalletChange]:
    """Pending changes created before `created_before`, oldest first: the dual writes that
    reconciliation finishes."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM wallet_changes WHERE state = 'pending' AND created_at < %s"
        " ORDER BY created_at, id LIMIT %s",
        (created_before, page_limit(limit)),
    )
    return [_row(row) for row in await cursor.fetchall()]
