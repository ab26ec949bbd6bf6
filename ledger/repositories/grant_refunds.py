"""Refunds in money of unused paid credits: recorded 'pending' before the ledger moves, then
'applied' or 'refused' (migration 0010 states the order of the dual write).

Invariants (enforced by the schema): a refund takes a positive number of credits out of one
block and records the money returned (>= 0, in minor units of the block's currency); the row
is append-only except the one update that finishes a pending refund; a finished refund has its
time, a refused one its reason. `operation_id` is the refund transfer's id and user_data_128,
and the `operation_id` of its `refund_out` entry in the projection.
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

_COLUMNS: Final = (
    "operation_id, grant_id, credit_type_id, credits, refund_minor, currency, whole,"
    " effective_at, state, refusal, actor, reason, created_at, finished_at"
)


class RefundState(enum.StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    REFUSED = "refused"


class GrantRefund(msgspec.Struct, frozen=True, kw_only=True):
    operation_id: int
    grant_id: int
    credit_type_id: int
    credits: int  # taken out of the block, exactly
    refund_minor: int  # money returned, in minor units of `currency`
    currency: str  # the block's
    whole: bool  # asked as "all that is left" (credits: what was left when it was asked)
    effective_at: datetime  # the business time of the refund (the transfer's user_data_64)
    state: RefundState
    refusal: str | None
    actor: str
    reason: str | None
    created_at: datetime
    finished_at: datetime | None


class NewGrantRefund(msgspec.Struct, frozen=True, kw_only=True):
    operation_id: int
    grant_id: int
    credit_type_id: int
    credits: int
    refund_minor: int
    currency: str
    whole: bool
    effective_at: datetime
    actor: str
    reason: str | None = None


def _row(row: tuple[Any, ...]) -> GrantRefund:
    return GrantRefund(
        operation_id=from_uuid(row[0]),
        grant_id=from_uuid(row[1]),
        credit_type_id=int(row[2]),
        credits=from_amount(row[3]),
        refund_minor=int(row[4]),
        currency=row[5],
        whole=bool(row[6]),
        effective_at=row[7],
        state=RefundState(row[8]),
        refusal=row[9],
        actor=row[10],
        reason=row[11],
        created_at=row[12],
        finished_at=row[13],
    )


async def insert_refund(conn: Connection, refund: NewGrantRefund) -> GrantRefund:
    cursor = await conn.execute(
        "INSERT INTO grant_refunds (operation_id, grant_id, credit_type_id, credits,"
        " refund_minor, currency, whole, effective_at, actor, reason)"
        f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
        (
            to_uuid(refund.operation_id),
            to_uuid(refund.grant_id),
            refund.credit_type_id,
            to_amount(refund.credits),
            refund.refund_minor,
            refund.currency,
            refund.whole,
            refund.effective_at,
            refund.actor,
            refund.reason,
        ),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _row(row)


async def get_refund(conn: Connection, operation_id: int) -> GrantRefund | None:
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM grant_refunds WHERE operation_id = %s", (to_uuid(operation_id),)
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def finish_refund(
    conn: Connection, operation_id: int, state: RefundState, *, refusal: str | None = None
) -> GrantRefund | None:
    """Mark a pending refund applied or refused; None if it is not pending (any more)."""
    assert state is not RefundState.PENDING
    assert (state is RefundState.REFUSED) == (refusal is not None)
    cursor = await conn.execute(
        "UPDATE grant_refunds SET state = %s, refusal = %s, finished_at = now()"
        f" WHERE operation_id = %s AND state = 'pending' RETURNING {_COLUMNS}",
        (state.value, refusal, to_uuid(operation_id)),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_pending_refunds(
    conn: Connection, created_before: datetime, *, limit: int = ROWS_PER_PAGE_DEFAULT
) -> list[GrantRefund]:
    """Pending refunds created before `created_before`, oldest first: the dual writes that
    reconciliation finishes."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM grant_refunds WHERE state = 'pending' AND created_at < %s"
        " ORDER BY created_at, operation_id LIMIT %s",
        (created_before, page_limit(limit)),
    )
    return [_row(row) for row in await cursor.fetchall()]
