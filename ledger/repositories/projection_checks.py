"""The reads and the record of the projection's reconciliation (wallets/reconcile_projection.py;
migration 0008): what the entries add up to, per transfer code over a range of engine
time and per account up to an instant; the catalog's owners of engine accounts; the runs.

Nothing here writes the projection: a run only appends its row to `projection_checks`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Final

import msgspec

from ledger.db import Connection
from ledger.repositories._rows import from_amount, from_uuid, to_uuid, uuids

# The grant states whose block was issued: its account exists on the engine (a pending grant
# is reconciliation's to finish, an abandoned one never reached the engine, or may have).
ISSUED_STATES: Final = ("active", "expired", "voided")


class Totals(msgspec.Struct):
    """What the movements of one (credit type, code, form) added up to. A movement is one
    transfer on one owned account (a partial post's settle and release rows are one)."""

    movements: int = 0
    debited: int = 0  # posted out of owned accounts
    credited: int = 0  # posted into owned accounts
    held: int = 0  # pending taken on (debits pending up)
    released: int = 0  # pending given back, posted or not (debits pending down)

    def row(self) -> tuple[int, int, int, int, int]:
        return (self.movements, self.debited, self.credited, self.held, self.released)


class TimeoutEntry(msgspec.Struct, frozen=True):
    transfer_id: int  # the pending leg's id
    engine_ts: int  # the instant the projection says the engine released it
    account_id: int
    code: int
    credit_type_id: int
    released: int


class AccountSums(msgspec.Struct, frozen=True):
    """An account's entries up to an instant `at_ts` (the engine's last transfer on it at or
    before the watermark)."""

    amount: int  # sum of `amount` up to at_ts: the posted balance
    pending: int  # sum of `pending` up to at_ts: the debits held
    late: int  # entries after at_ts (up to the watermark) that are not timeouts
    recent_timeouts: list[int]  # what timeouts in the window before at_ts released, latest first


class CatalogOwner(msgspec.Struct, frozen=True):
    id: int
    credit_type_id: int
    owner_id: int  # a grant's wallet; a wallet's or budget's own id


class Check(msgspec.Struct, frozen=True):
    id: int
    ran_at: datetime
    from_ts: int
    through_ts: int
    clean: bool
    range_clean: bool
    differences: list[dict[str, Any]]


# -- the runs ----------------------------------------------------------------------------------

_CHECK_COLUMNS: Final = "id, ran_at, from_ts, through_ts, clean, range_clean, differences"


def _check(row: tuple[Any, ...]) -> Check:
    return Check(
        id=int(row[0]),
        ran_at=row[1],
        from_ts=int(row[2]),
        through_ts=int(row[3]),
        clean=bool(row[4]),
        range_clean=bool(row[5]),
        differences=list(row[6]),
    )


async def range_start(conn: Connection) -> int:
    """Where the next run's range starts: after the last run whose range was clean."""
    cursor = await conn.execute(
        "SELECT through_ts FROM projection_checks WHERE range_clean ORDER BY id DESC LIMIT 1"
    )
    row = await cursor.fetchone()
    return 1 if row is None else int(row[0]) + 1


async def last_check(conn: Connection) -> Check | None:
    cursor = await conn.execute(
        f"SELECT {_CHECK_COLUMNS} FROM projection_checks ORDER BY id DESC LIMIT 1"
    )
    row = await cursor.fetchone()
    return None if row is None else _check(row)


async def record_check(
    conn: Connection,
    *,
    from_ts: int,
    through_ts: int,
    clean: bool,
    range_clean: bool,
    differences: list[dict[str, Any]],
) -> Check:
    assert from_ts >= 1 and through_ts >= from_ts - 1
    assert range_clean or not clean
    cursor = await conn.execute(
        "INSERT INTO projection_checks (from_ts, through_ts, clean, range_clean, differences)"
        f" VALUES (%s, %s, %s, %s, %s::jsonb) RETURNING {_CHECK_COLUMNS}",
        (from_ts, through_ts, clean, range_clean, msgspec.json.encode(differences).decode()),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _check(row)


# -- what the entries add up to -----------------------------------------------------------------

# A movement's form from its rows: a reserve is `pending`, a timeout `timeout`, settle and
# release rows of one transfer on one account are a `post` (some of it posted) or a `void`
# (nothing posted), everything else `posted`.
_TOTALS: Final = """
WITH rows AS (
    SELECT credit_type_id, code, transfer_id, account_id, kind, amount, pending,
           CASE kind WHEN 'reserve' THEN 'pending' WHEN 'timeout' THEN 'timeout'
                     WHEN 'settle' THEN 'resolve' WHEN 'release' THEN 'resolve'
                     ELSE 'posted' END AS grp
    FROM ledger_entries
    WHERE engine_ts BETWEEN %s AND %s
), movements AS (
    SELECT credit_type_id, code, grp, bool_or(kind = 'settle') AS settled,
           sum(greatest(-amount, 0)) AS debited, sum(greatest(amount, 0)) AS credited,
           sum(greatest(pending, 0)) AS held, sum(greatest(-pending, 0)) AS released
    FROM rows
    GROUP BY credit_type_id, code, grp, transfer_id, account_id
)
SELECT credit_type_id, code,
       CASE WHEN grp <> 'resolve' THEN grp WHEN settled THEN 'post' ELSE 'void' END,
       count(*), sum(debited), sum(credited), sum(held), sum(released)
FROM movements
GROUP BY 1, 2, 3
"""


async def entry_totals(
    conn: Connection, from_ts: int, through_ts: int
) -> dict[tuple[int, int, str], Totals]:
    """The entries of engine time from_ts..through_ts (inclusive), added up per (credit type,
    code, form)."""
    cursor = await conn.execute(_TOTALS, (from_ts, through_ts))
    return {
        (int(r[0]), int(r[1]), str(r[2])): Totals(
            int(r[3]), from_amount(r[4]), from_amount(r[5]), from_amount(r[6]), from_amount(r[7])
        )
        for r in await cursor.fetchall()
    }


async def timeouts_between(conn: Connection, from_ts: int, through_ts: int) -> list[TimeoutEntry]:
    """The timeout entries of engine time from_ts..through_ts (inclusive)."""
    cursor = await conn.execute(
        "SELECT transfer_id, engine_ts, account_id, code, credit_type_id, -pending"
        " FROM ledger_entries WHERE kind = 'timeout' AND engine_ts BETWEEN %s AND %s",
        (from_ts, through_ts),
    )
    return [
        TimeoutEntry(
            transfer_id=from_uuid(r[0]),
            engine_ts=int(r[1]),
            account_id=from_uuid(r[2]),
            code=int(r[3]),
            credit_type_id=int(r[4]),
            released=from_amount(r[5]),
        )
        for r in await cursor.fetchall()
    ]


_SUMS: Final = """
SELECT v.account_id,
       COALESCE(sum(e.amount) FILTER (WHERE e.engine_ts <= v.at_ts), 0),
       COALESCE(sum(e.pending) FILTER (WHERE e.engine_ts <= v.at_ts), 0),
       count(*) FILTER (WHERE e.engine_ts > v.at_ts AND e.kind <> 'timeout'),
       COALESCE(array_agg(-e.pending ORDER BY e.engine_ts DESC) FILTER (
           WHERE e.kind = 'timeout' AND e.engine_ts <= v.at_ts AND e.engine_ts > v.at_ts - %s
       ), '{}')
FROM unnest(%s::uuid[], %s::bigint[]) AS v (account_id, at_ts)
LEFT JOIN ledger_entries e ON e.account_id = v.account_id AND e.engine_ts <= %s
GROUP BY v.account_id
"""


async def account_sums(
    conn: Connection, points: Sequence[tuple[int, int]], watermark_ts: int, window_ns: int
) -> dict[int, AccountSums]:
    """For each (account, at_ts): its entries up to at_ts, those after it up to the watermark
    that are not timeouts, and the timeouts of the `window_ns` up to at_ts."""
    if not points:
        return {}
    ids = uuids([account for account, _ in points])
    cursor = await conn.execute(
        _SUMS, (window_ns, ids, [at_ts for _, at_ts in points], watermark_ts)
    )
    return {
        from_uuid(r[0]): AccountSums(
            amount=from_amount(r[1]),
            pending=from_amount(r[2]),
            late=int(r[3]),
            recent_timeouts=[from_amount(x) for x in r[4]],
        )
        for r in await cursor.fetchall()
    }


async def entry_accounts(conn: Connection, after: int, limit: int) -> list[int]:
    """The accounts that have entries, in id order after `after`: one index probe per account
    (a loose index scan), not a scan of the entries."""
    assert limit >= 1
    cursor = await conn.execute(
        """
        WITH RECURSIVE a (account_id) AS (
            (SELECT account_id FROM ledger_entries WHERE account_id > %s
             ORDER BY account_id LIMIT 1)
            UNION ALL
            SELECT (SELECT e.account_id FROM ledger_entries e WHERE e.account_id > a.account_id
                    ORDER BY e.account_id LIMIT 1)
            FROM a WHERE a.account_id IS NOT NULL
        )
        SELECT account_id FROM a WHERE account_id IS NOT NULL LIMIT %s
        """,
        (to_uuid(after), limit),
    )
    return [from_uuid(r[0]) for r in await cursor.fetchall()]


# -- the catalog's side ---------------------------------------------------------------------------


async def grants_of(conn: Connection, ids: Collection[int]) -> dict[int, CatalogOwner]:
    """The grants among `ids` (any state): credit type and wallet."""
    if not ids:
        return {}
    cursor = await conn.execute(
        "SELECT id, credit_type_id, wallet_id FROM grants WHERE id = ANY(%s)", (uuids(ids),)
    )
    return {
        from_uuid(r[0]): CatalogOwner(from_uuid(r[0]), int(r[1]), from_uuid(r[2]))
        for r in await cursor.fetchall()
    }


async def wallets_of(conn: Connection, ids: Collection[int]) -> dict[int, CatalogOwner]:
    if not ids:
        return {}
    cursor = await conn.execute(
        "SELECT id, credit_type_id FROM wallets WHERE id = ANY(%s)", (uuids(ids),)
    )
    return {
        from_uuid(r[0]): CatalogOwner(from_uuid(r[0]), int(r[1]), from_uuid(r[0]))
        for r in await cursor.fetchall()
    }


async def budgets_of(conn: Connection, ids: Collection[int]) -> dict[int, CatalogOwner]:
    if not ids:
        return {}
    cursor = await conn.execute(
        "SELECT id, credit_type_id FROM budgets WHERE id = ANY(%s)", (uuids(ids),)
    )
    return {
        from_uuid(r[0]): CatalogOwner(from_uuid(r[0]), int(r[1]), from_uuid(r[0]))
        for r in await cursor.fetchall()
    }


async def issued_grants(conn: Connection, after: int, limit: int) -> list[int]:
    """Ids of issued grants (ISSUED_STATES), in id order after `after`."""
    cursor = await conn.execute(
        "SELECT id FROM grants WHERE id > %s AND state = ANY(%s) ORDER BY id LIMIT %s",
        (to_uuid(after), list(ISSUED_STATES), limit),
    )
    return [from_uuid(r[0]) for r in await cursor.fetchall()]


async def wallets_created_before(
    conn: Connection, created_before: datetime, after: int, limit: int
) -> list[tuple[int, bool]]:
    """(id, soft) of the wallets created before `created_before`, in id order after `after`."""
    cursor = await conn.execute(
        "SELECT id, overdraft_mode = 'soft' FROM wallets WHERE id > %s AND created_at < %s"
        " ORDER BY id LIMIT %s",
        (to_uuid(after), created_before, limit),
    )
    return [(from_uuid(r[0]), bool(r[1])) for r in await cursor.fetchall()]
