"""Grants: credit blocks. A grant's id is its TigerBeetle account id.

Invariants (enforced by the schema): amount > 0; a paid grant, and any grant with a
consideration, has a currency; expires_at (exclusive) is after effective_at; a grant's credit
type is its wallet's. `state` is 'pending' until the grant's account and funding transfer exist
in TigerBeetle, then 'active'; 'voided' once voided. Balances are never stored here.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import msgspec

from ledger.db import Connection
from ledger.repositories._rows import (
    ROWS_PER_PAGE_DEFAULT,
    Keyset,
    equal,
    fetch_page,
    from_amount,
    from_uuid,
    page_limit,
    to_amount,
    to_uuid,
    to_uuid_or_none,
    uuids,
)

_COLUMNS: Final = (
    "id, wallet_id, credit_type_id, amount, category, consideration_minor, currency, priority,"
    " effective_at, expires_at, source, reason, actor, external_ref, state, created_at,"
    " exchange_rate, rollover_max, rollover_min, rollover_expires_at, rollover_state,"
    " source_grant_id, rollover_attempt"
)


class GrantCategory(enum.StrEnum):
    PAID = "paid"
    PROMOTIONAL = "promotional"


class GrantSource(enum.StrEnum):
    ADMIN = "admin"
    PURCHASE = "purchase"
    PLAN_ALLOCATION = "plan_allocation"
    ROLLOVER = "rollover"


class RolloverState(enum.StrEnum):
    DUE = "due"  # the block has a policy; its rollover has not been decided
    PENDING = "pending"  # the new blocks' rows are written, their amounts fixed
    DONE = "done"  # the ledger moved and the new blocks are active (or nothing was carried)
    REFUSED = "refused"  # the engine found less left than fixed: the new rows are abandoned


class Rollover(msgspec.Struct, frozen=True, kw_only=True):
    """A block's rollover policy as stored, and where its rollover stands."""

    max_credits: int
    min_credits: int
    expires_at: datetime
    state: RolloverState
    attempt: int = 0  # which attempt stands (an attempt the engine refused is followed by one)


class GrantState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    VOIDED = "voided"
    EXPIRED = "expired"  # swept, and nothing held: nothing can come back to it
    # Never reached the ledger and never will: an operator gave up on it (reconcile_failures).
    ABANDONED = "abandoned"


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    id: int  # = the TigerBeetle account id of the block
    wallet_id: int
    credit_type_id: int
    amount: int
    category: GrantCategory
    consideration_minor: int  # what the customer paid, in minor units of `currency`
    currency: str | None  # ISO 4217
    # Units of the functional currency per unit of `currency` at receipt (None: unknown, or a
    # promotional block). Set at issue, never changed (migration 0010).
    exchange_rate: Decimal | None
    priority: int
    effective_at: datetime
    expires_at: datetime | None  # exclusive; None: never expires
    source: GrantSource
    reason: str | None
    actor: str
    external_ref: str | None
    state: GrantState
    created_at: datetime
    rollover: Rollover | None = None
    source_grant_id: int | None = None  # a rollover block's source block


class NewGrant(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a grant that its issuer chooses."""

    id: int
    wallet_id: int
    credit_type_id: int
    amount: int
    category: GrantCategory
    effective_at: datetime
    source: GrantSource
    actor: str
    consideration_minor: int = 0
    currency: str | None = None
    exchange_rate: Decimal | None = None
    priority: int = 0
    expires_at: datetime | None = None
    reason: str | None = None
    external_ref: str | None = None
    state: GrantState = GrantState.PENDING
    rollover: Rollover | None = None
    source_grant_id: int | None = None


def _row(row: tuple[Any, ...]) -> Grant:
    return Grant(
        id=from_uuid(row[0]),
        wallet_id=from_uuid(row[1]),
        credit_type_id=int(row[2]),
        amount=from_amount(row[3]),
        category=GrantCategory(row[4]),
        consideration_minor=int(row[5]),
        currency=row[6],
        priority=int(row[7]),
        effective_at=row[8],
        expires_at=row[9],
        source=GrantSource(row[10]),
        reason=row[11],
        actor=row[12],
        external_ref=row[13],
        state=GrantState(row[14]),
        created_at=row[15],
        exchange_rate=row[16],
        rollover=None
        if row[17] is None
        else Rollover(
            max_credits=from_amount(row[17]),
            min_credits=from_amount(row[18]),
            expires_at=row[19],
            state=RolloverState(row[20]),
            attempt=int(row[22]),
        ),
        source_grant_id=None if row[21] is None else from_uuid(row[21]),
    )


async def insert_grant(conn: Connection, grant: NewGrant) -> Grant:
    cursor = await conn.execute(
        "INSERT INTO grants (id, wallet_id, credit_type_id, amount, category,"
        " consideration_minor, currency, priority, effective_at, expires_at, source, reason,"
        " actor, external_ref, state, exchange_rate, rollover_max, rollover_min,"
        " rollover_expires_at, rollover_state, source_grant_id)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
        " %s, %s, %s, %s, %s)"
        f" RETURNING {_COLUMNS}",
        (
            to_uuid(grant.id),
            to_uuid(grant.wallet_id),
            grant.credit_type_id,
            to_amount(grant.amount),
            grant.category.value,
            grant.consideration_minor,
            grant.currency,
            grant.priority,
            grant.effective_at,
            grant.expires_at,
            grant.source.value,
            grant.reason,
            grant.actor,
            grant.external_ref,
            grant.state.value,
            grant.exchange_rate,
            None if grant.rollover is None else to_amount(grant.rollover.max_credits),
            None if grant.rollover is None else to_amount(grant.rollover.min_credits),
            None if grant.rollover is None else grant.rollover.expires_at,
            None if grant.rollover is None else grant.rollover.state.value,
            to_uuid_or_none(grant.source_grant_id),
        ),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _row(row)


async def get_grant(conn: Connection, id: int) -> Grant | None:
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM grants WHERE id = %s", (to_uuid(id),))
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def get_grants(conn: Connection, ids: Collection[int]) -> list[Grant]:
    """The grants with these ids (those that exist), by id."""
    if not ids:
        return []
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM grants WHERE id = ANY(%s) ORDER BY id", (uuids(ids),)
    )
    return [_row(row) for row in await cursor.fetchall()]


async def list_grants_for_wallets(
    conn: Connection,
    wallet_ids: Collection[int],
    *,
    states: Collection[GrantState] | None = None,
) -> list[Grant]:
    """The grants of these wallets (in these states, if given), by wallet then id.

    Not in burn order: burn order is one versioned function in `grants`, applied to these rows.
    """
    if states is None:
        cursor = await conn.execute(
            f"SELECT {_COLUMNS} FROM grants WHERE wallet_id = ANY(%s) ORDER BY wallet_id, id",
            (uuids(wallet_ids),),
        )
    else:
        cursor = await conn.execute(
            f"SELECT {_COLUMNS} FROM grants WHERE wallet_id = ANY(%s) AND state = ANY(%s)"
            " ORDER BY wallet_id, id",
            (uuids(wallet_ids), [state.value for state in states]),
        )
    return [_row(row) for row in await cursor.fetchall()]


# A block's state as a spend sees it at an instant (the values of wallets.statements.BlockState
# and of the wire's GrantState), from what Postgres knows of it: its dual write's state and its
# times. Not yet on the ledger (pending) or before effective_at: upcoming; from expires_at (or
# swept): expired; voided, or abandoned by an operator (never issued): voided. Each as SQL with
# the instant as its parameters, and as Python (`block_state`): the two say the same.
BLOCK_STATES: Final = {
    "upcoming": ("(state = 'pending' OR (state = 'active' AND effective_at > %s))", 1),
    "active": (
        "(state = 'active' AND effective_at <= %s AND (expires_at IS NULL OR expires_at > %s))",
        2,
    ),
    "expired": ("(state = 'expired' OR (state = 'active' AND expires_at <= %s))", 1),
    "voided": ("state IN ('voided', 'abandoned')", 0),
}


def block_state(grant: Grant, at: datetime) -> str:
    """The grant's state as a spend sees it at `at` (one of BLOCK_STATES)."""
    if grant.state in (GrantState.VOIDED, GrantState.ABANDONED):
        return "voided"
    if grant.state is GrantState.EXPIRED:
        return "expired"
    if grant.state is GrantState.PENDING or grant.effective_at > at:
        return "upcoming"
    if grant.expires_at is not None and grant.expires_at <= at:
        return "expired"
    return "active"


async def list_grants(
    conn: Connection,
    *,
    wallet_id: int | None = None,
    customer_id: int | None = None,
    block: tuple[str, datetime] | None = None,
    category: GrantCategory | None = None,
    expires_before: datetime | None = None,
    after: Keyset | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> tuple[list[Grant], bool]:
    """A page of grants with every filter given, in (created_at, id) order, and whether more
    follow. `block`: (a state of BLOCK_STATES, the instant it is judged at); `expires_before`:
    grants with an expiry strictly before it (never-expiring ones are not); `customer_id`: the
    grants of that customer's wallets."""
    conditions = equal(
        wallet_id=to_uuid_or_none(wallet_id),
        category=None if category is None else category.value,
    )
    if block is not None:
        state, at = block
        sql, instants = BLOCK_STATES[state]
        conditions.append((sql, (at,) * instants))
    if customer_id is not None:
        conditions.append(
            ("wallet_id IN (SELECT w.id FROM wallets w JOIN resources r ON r.id = w.resource_id"
             " WHERE r.customer_id = %s)", (to_uuid(customer_id),))
        )  # fmt: skip
    if expires_before is not None:
        conditions.append(("expires_at < %s", (expires_before,)))
    select = f"SELECT {_COLUMNS} FROM grants"
    return await fetch_page(conn, select, conditions, _row, after=after, limit=limit)


async def set_grant_state(
    conn: Connection,
    id: int,
    state: GrantState,
    *,
    expected: Collection[GrantState] | None = None,
) -> Grant | None:
    """Set the grant's state; with `expected`, only if its current state is one of those.

    Returns the updated grant, or None when there is no such grant or its state was not an
    expected one (a compare-and-set: `expected=[PENDING]` activates a grant exactly once).
    """
    if expected is None:
        cursor = await conn.execute(
            f"UPDATE grants SET state = %s WHERE id = %s RETURNING {_COLUMNS}",
            (state.value, to_uuid(id)),
        )
    else:
        cursor = await conn.execute(
            f"UPDATE grants SET state = %s WHERE id = %s AND state = ANY(%s) RETURNING {_COLUMNS}",
            (state.value, to_uuid(id), [s.value for s in expected]),
        )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def lock_grant(conn: Connection, id: int) -> Grant | None:
    """The grant, row-locked until the transaction ends (changes of one grant, one at a time)."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM grants WHERE id = %s FOR UPDATE", (to_uuid(id),)
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def set_grant_expiry(conn: Connection, id: int, expires_at: datetime | None) -> Grant | None:
    """A new expiry (None: never) of an active grant; None when it is not active. The schema
    still requires it after effective_at. Every process learns it through grants_notify."""
    cursor = await conn.execute(
        f"UPDATE grants SET expires_at = %s WHERE id = %s AND state = 'active'"
        f" RETURNING {_COLUMNS}",
        (expires_at, to_uuid(id)),
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def list_expired_active_grants(
    conn: Connection, at: datetime, *, limit: int = ROWS_PER_PAGE_DEFAULT
) -> list[Grant]:
    """Active grants whose expiry is at or before `at`, oldest expiry first (for the sweep)."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM grants"
        " WHERE state = 'active' AND expires_at IS NOT NULL AND expires_at <= %s"
        " ORDER BY expires_at, id LIMIT %s",
        (at, page_limit(limit)),
    )
    return [_row(row) for row in await cursor.fetchall()]


async def list_pending_grants(
    conn: Connection, created_before: datetime, *, limit: int = ROWS_PER_PAGE_DEFAULT
) -> list[Grant]:
    """Grants still 'pending' that were created before `created_before`, oldest first: the
    dual writes that reconciliation must finish (or undo). Rollover blocks are not among
    them: the rollover pass finishes those (`rollovers_due`). Those whose last attempt failed come
    after all the others, so that a row that cannot be finished never holds the rest back."""
    columns = ", ".join(f"g.{c.strip()}" for c in _COLUMNS.split(","))
    cursor = await conn.execute(
        f"SELECT {columns} FROM grants g LEFT JOIN reconcile_failures f"
        " ON f.kind = 'grant' AND f.object_id = g.id::text AND f.resolved_at IS NULL"
        " WHERE g.state = 'pending' AND g.created_at < %s AND g.source_grant_id IS NULL"
        " ORDER BY (f.kind IS NOT NULL), g.created_at, g.id LIMIT %s",
        (created_before, page_limit(limit)),
    )
    return [_row(row) for row in await cursor.fetchall()]


async def list_all_live_grants(conn: Connection) -> list[Grant]:
    """Every active grant, by id, unpaged: for the catalog snapshot only. Active grants past
    their expiry are included: the spend path skips them, the sweep still needs them."""
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM grants WHERE state = 'active' ORDER BY id")
    return [_row(row) for row in await cursor.fetchall()]


async def list_grants_in_states(conn: Connection, states: Collection[GrantState]) -> list[Grant]:
    """Every grant in one of `states`, by id, unpaged: for states that stay few (abandoned)."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM grants WHERE state = ANY(%s) ORDER BY id",
        ([s.value for s in states],),
    )
    return [_row(row) for row in await cursor.fetchall()]


async def rollovers_due(
    conn: Connection, at: datetime, *, limit: int = ROWS_PER_PAGE_DEFAULT
) -> list[int]:
    """Blocks past their expiry (at `at`) whose rollover is not done, oldest expiry first."""
    cursor = await conn.execute(
        "SELECT id FROM grants WHERE rollover_state IN ('due', 'pending')"
        " AND expires_at <= %s AND state IN ('active', 'voided')"
        " ORDER BY expires_at, id LIMIT %s",
        (at, page_limit(limit)),
    )
    return [from_uuid(row[0]) for row in await cursor.fetchall()]


async def lock_rollover_source(conn: Connection, id: int) -> Grant | None:
    """The block, locked for its rollover, unless another transaction holds it (None then, as
    for no such block): two passes never decide one block's rollover at once."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM grants WHERE id = %s FOR UPDATE SKIP LOCKED", (to_uuid(id),)
    )
    row = await cursor.fetchone()
    return None if row is None else _row(row)


async def set_rollover_state(
    conn: Connection, id: int, state: RolloverState, *, expected: Collection[RolloverState]
) -> bool:
    """Compare-and-set of a block's rollover state; whether it changed."""
    cursor = await conn.execute(
        "UPDATE grants SET rollover_state = %s WHERE id = %s AND rollover_state = ANY(%s)",
        (state.value, to_uuid(id), [s.value for s in expected]),
    )
    return cursor.rowcount == 1


async def retry_rollover(conn: Connection, id: int) -> bool:
    """A pending rollover the engine refused goes back to 'due' as its next attempt (the caller
    abandons the refused attempt's rows in the same transaction); whether it did."""
    cursor = await conn.execute(
        "UPDATE grants SET rollover_state = 'due', rollover_attempt = rollover_attempt + 1"
        " WHERE id = %s AND rollover_state = 'pending'",
        (to_uuid(id),),
    )
    return cursor.rowcount == 1


async def rollover_blocks(conn: Connection, source_id: int) -> list[Grant]:
    """The blocks a block rolled over into (the carried one and the floor of each attempt; those
    of a refused attempt are 'abandoned')."""
    cursor = await conn.execute(
        f"SELECT {_COLUMNS} FROM grants WHERE source_grant_id = %s ORDER BY id",
        (to_uuid(source_id),),
    )
    return [_row(row) for row in await cursor.fetchall()]
