"""The alerts deriver's tables (migration 0014): its watermark, each wallet's and budget
period's figures, thresholds and their marks, top-up rules and top-ups, expiry notices.

Invariants:
- The deriver writes its figures, marks, events and top-ups in the transaction that moves its
  watermark (`lock_state` first: a second deriver waits on the row, then reads the new
  watermark). A crash loses nothing and writes nothing twice.
- A top-up is written 'pending' (or 'capped') by the deriver; only `mark_issued` finishes it,
  once, with its grant (`WHERE state = 'pending'`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
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
    from_uuid_or_none,
    hex_id,
    int_amounts,
    to_uuid,
    to_uuid_or_none,
    uuids,
)


class AlertEntry(msgspec.Struct, frozen=True):
    """What the deriver reads of a projected entry."""

    transfer_id: int
    kind: str
    engine_ts: int
    account_id: int
    account_kind: str  # block | overdraft | budget
    wallet_id: int  # the wallet that spent, else the owner (0: none)
    operation_id: int  # 0: none
    reservation_id: int  # 0: none
    amount: int
    pending: int
    effective_at_ns: int = 0  # business time (a budget period's account is of its period)


class WalletFigures(msgspec.Struct, kw_only=True):
    wallet_id: int
    available: int = 0
    deficit: int = 0
    depletions: int = 0
    overdrafts: int = 0


class BudgetPeriod(msgspec.Struct, kw_only=True):
    account_id: int
    budget_id: int
    period_start_ns: int
    credit_limit: int = 0
    balance: int = 0
    exceedings: int = 0


class Threshold(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    wallet_id: int | None
    budget_id: int | None
    amount: int | None
    percent: int | None
    actor: str
    created_at: dt.datetime


class Mark(msgspec.Struct, kw_only=True):
    threshold_id: int
    subject_id: int
    armed: bool = True
    crossings: int = 0


class Rule(msgspec.Struct, kw_only=True):
    wallet_id: int
    threshold: int
    amount: int
    consideration_minor: int
    currency: str
    priority: int
    expires_in_days: int | None
    daily_max: int
    enabled: bool
    armed: bool
    crossings: int
    actor: str
    created_at: dt.datetime
    updated_at: dt.datetime


class TopUp(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    wallet_id: int
    crossing: int
    state: str  # pending | issued | capped | refused
    threshold: int
    amount: int
    consideration_minor: int
    currency: str
    priority: int
    expires_at: dt.datetime | None
    crossed_at: dt.datetime
    day: dt.date
    transfer_id: int
    grant_id: int | None = None
    created_at: dt.datetime | None = None
    issued_at: dt.datetime | None = None
    refusal: str | None = None


class ExpiringBlock(msgspec.Struct, frozen=True):
    grant_id: int
    wallet_id: int
    expires_at: dt.datetime
    credits: int  # what the projection says is left (posted - held)


# -- the deriver's state --------------------------------------------------------------------------


async def lock_state(conn: Connection) -> tuple[int, int]:
    """(watermark, entries read so far), the row locked for the caller's transaction."""
    cursor = await conn.execute(
        "SELECT watermark_ts, entries FROM alerts_state WHERE name = 'alerts' FOR UPDATE"
    )
    row = await cursor.fetchone()
    assert row is not None, "migration 0014 inserts the state row"
    return int(row[0]), int(row[1])


async def advance(conn: Connection, watermark_ts: int, entries: int) -> None:
    await conn.execute(
        "UPDATE alerts_state SET watermark_ts = %s, entries = entries + %s, updated_at = now()"
        " WHERE name = 'alerts'",
        (watermark_ts, entries),
    )


# The entries' ids as hex text (`hex_id`), their amounts as ints (`int_amounts`): the deriver
# reads every projected entry, and building a uuid.UUID and a Decimal for each value, then an
# int of each, was half of its CPU.
_ENTRIES_SQL: Final = f"""
    SELECT {hex_id("transfer_id")}, kind, engine_ts, {hex_id("account_id")}, account_kind,
           {hex_id("wallet_id")}, {hex_id("operation_id")}, {hex_id("reservation_id")},
           amount, pending, (extract(epoch FROM effective_at) * 1000000)::bigint
    FROM ledger_entries
    WHERE engine_ts > %s AND engine_ts <= %s
    ORDER BY engine_ts, transfer_id, kind, account_id
    LIMIT %s
    """


async def read_entries(
    conn: Connection, after_ts: int, through_ts: int, limit: int
) -> list[AlertEntry]:
    """The projection's entries of engine time after_ts..through_ts, in engine order."""
    cursor = int_amounts(conn.cursor())
    await cursor.execute(_ENTRIES_SQL, (after_ts, through_ts, limit))
    return [
        AlertEntry(
            int(transfer, 16),
            kind,
            engine_ts,
            int(account, 16),
            account_kind,
            int(wallet, 16),
            int(operation, 16),
            int(reservation, 16),
            amount,
            pending,
            effective_at_us * 1000,
        )
        for (
            transfer,
            kind,
            engine_ts,
            account,
            account_kind,
            wallet,
            operation,
            reservation,
            amount,
            pending,
            effective_at_us,
        ) in await cursor.fetchall()
    ]


async def block_wallets(conn: Connection, ids: Collection[int]) -> dict[int, int]:
    """block (grant) -> its wallet."""
    if not ids:
        return {}
    cursor = await conn.execute(
        "SELECT id, wallet_id FROM grants WHERE id = ANY(%s)", (uuids(ids),)
    )
    return {from_uuid(r[0]): from_uuid(r[1]) for r in await cursor.fetchall()}


async def overdraft_wallets(conn: Connection, ids: Collection[int]) -> dict[int, int]:
    """overdraft account -> its wallet."""
    if not ids:
        return {}
    cursor = await conn.execute(
        "SELECT overdraft_account_id, id FROM wallets WHERE overdraft_account_id = ANY(%s)",
        (uuids(ids),),
    )
    return {from_uuid(r[0]): from_uuid(r[1]) for r in await cursor.fetchall()}


async def wallet_figures(conn: Connection, ids: Collection[int]) -> dict[int, WalletFigures]:
    if not ids:
        return {}
    cursor = await conn.execute(
        "SELECT wallet_id, available, deficit, depletions, overdrafts FROM alert_wallets"
        " WHERE wallet_id = ANY(%s)",
        (uuids(ids),),
    )
    return {
        from_uuid(r[0]): WalletFigures(
            wallet_id=from_uuid(r[0]),
            available=from_amount(r[1]),
            deficit=from_amount(r[2]),
            depletions=int(r[3]),
            overdrafts=int(r[4]),
        )
        for r in await cursor.fetchall()
    }


async def seed_wallets(
    conn: Connection, ids: Collection[int], through_ts: int
) -> dict[int, WalletFigures]:
    """The figures of wallets the deriver has not seen yet, summed from the projection's
    entries up to `through_ts` (its watermark): a deriver that starts on a ledger with history
    (the migration starts it at the projection's watermark) begins from the true figures."""
    if not ids:
        return {}
    cursor = await conn.execute(
        """
        SELECT w.id,
               coalesce((SELECT sum(e.amount - e.pending) FROM grants g
                         JOIN ledger_entries e ON e.account_id = g.id
                         WHERE g.wallet_id = w.id AND e.account_kind = 'block'
                           AND e.engine_ts <= %(through)s), 0),
               coalesce((SELECT sum(e.pending - e.amount) FROM ledger_entries e
                         WHERE e.account_id = w.overdraft_account_id
                           AND e.kind <> 'overdraft_limit' AND e.engine_ts <= %(through)s), 0)
        FROM wallets w WHERE w.id = ANY(%(ids)s)
        """,
        {"through": through_ts, "ids": uuids(ids)},
    )
    return {
        from_uuid(r[0]): WalletFigures(
            wallet_id=from_uuid(r[0]), available=from_amount(r[1]), deficit=from_amount(r[2])
        )
        for r in await cursor.fetchall()
    }


async def seed_budget_sums(
    conn: Connection, ids: Collection[int], through_ts: int
) -> dict[int, tuple[int, int]]:
    """budget period account -> (limit credited, balance) from the projection's entries up to
    `through_ts`, for accounts the deriver has not seen yet."""
    if not ids:
        return {}
    cursor = await conn.execute(
        "SELECT account_id, coalesce(sum(amount) FILTER (WHERE kind = 'budget_limit'), 0),"
        " coalesce(sum(amount - pending), 0) FROM ledger_entries"
        " WHERE account_id = ANY(%s) AND engine_ts <= %s GROUP BY account_id",
        (uuids(ids), through_ts),
    )
    return {
        from_uuid(r[0]): (from_amount(r[1]), from_amount(r[2])) for r in await cursor.fetchall()
    }


async def save_wallet_figures(conn: Connection, rows: Sequence[WalletFigures]) -> None:
    if not rows:
        return
    await conn.execute(
        """
        INSERT INTO alert_wallets AS a (wallet_id, available, deficit, depletions, overdrafts)
        SELECT * FROM unnest(%s::uuid[], %s::numeric[], %s::numeric[], %s::bigint[],
                             %s::bigint[])
        ON CONFLICT (wallet_id) DO UPDATE SET available = excluded.available,
            deficit = excluded.deficit, depletions = excluded.depletions,
            overdrafts = excluded.overdrafts, updated_at = now()
        """,
        (
            uuids([r.wallet_id for r in rows]),
            [r.available for r in rows],
            [r.deficit for r in rows],
            [r.depletions for r in rows],
            [r.overdrafts for r in rows],
        ),
    )


async def budget_periods(conn: Connection, ids: Collection[int]) -> dict[int, BudgetPeriod]:
    if not ids:
        return {}
    cursor = await conn.execute(
        "SELECT account_id, budget_id, period_start_ns, credit_limit, balance, exceedings"
        " FROM alert_budget_periods WHERE account_id = ANY(%s)",
        (uuids(ids),),
    )
    return {
        from_uuid(r[0]): BudgetPeriod(
            account_id=from_uuid(r[0]),
            budget_id=from_uuid(r[1]),
            period_start_ns=int(r[2]),
            credit_limit=from_amount(r[3]),
            balance=from_amount(r[4]),
            exceedings=int(r[5]),
        )
        for r in await cursor.fetchall()
    }


async def save_budget_periods(conn: Connection, rows: Sequence[BudgetPeriod]) -> None:
    if not rows:
        return
    await conn.execute(
        """
        INSERT INTO alert_budget_periods AS a
            (account_id, budget_id, period_start_ns, credit_limit, balance, exceedings)
        SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::bigint[], %s::numeric[],
                             %s::numeric[], %s::bigint[])
        ON CONFLICT (account_id) DO UPDATE SET credit_limit = excluded.credit_limit,
            balance = excluded.balance, exceedings = excluded.exceedings, updated_at = now()
        """,
        (
            uuids([r.account_id for r in rows]),
            uuids([r.budget_id for r in rows]),
            [r.period_start_ns for r in rows],
            [r.credit_limit for r in rows],
            [r.balance for r in rows],
            [r.exceedings for r in rows],
        ),
    )


# -- thresholds -----------------------------------------------------------------------------------

_THRESHOLD_COLUMNS: Final = "id, wallet_id, budget_id, amount, percent, actor, created_at"


def _threshold(r: tuple[Any, ...]) -> Threshold:
    return Threshold(
        id=from_uuid(r[0]),
        wallet_id=from_uuid_or_none(r[1]),
        budget_id=from_uuid_or_none(r[2]),
        amount=None if r[3] is None else from_amount(r[3]),
        percent=None if r[4] is None else int(r[4]),
        actor=r[5],
        created_at=r[6],
    )


async def thresholds_of(
    conn: Connection, *, wallets: Collection[int] = (), budgets: Collection[int] = ()
) -> list[Threshold]:
    """The thresholds in force on these wallets and budgets, oldest first."""
    if not wallets and not budgets:
        return []
    cursor = await conn.execute(
        f"SELECT {_THRESHOLD_COLUMNS} FROM alert_thresholds WHERE removed_at IS NULL"
        " AND (wallet_id = ANY(%s) OR budget_id = ANY(%s)) ORDER BY created_at, id",
        (uuids(wallets), uuids(budgets)),
    )
    return [_threshold(r) for r in await cursor.fetchall()]


async def insert_threshold(
    conn: Connection,
    *,
    id_: int,
    wallet_id: int | None,
    budget_id: int | None,
    amount: int | None,
    percent: int | None,
    actor: str,
) -> None:
    await conn.execute(
        "INSERT INTO alert_thresholds (id, wallet_id, budget_id, amount, percent, actor)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (
            to_uuid(id_),
            to_uuid_or_none(wallet_id),
            to_uuid_or_none(budget_id),
            amount,
            percent,
            actor,
        ),
    )


async def get_threshold(conn: Connection, id_: int, *, removed: bool = False) -> Threshold | None:
    """The threshold in force (or, with `removed`, also a removed one)."""
    condition = "" if removed else " AND removed_at IS NULL"
    cursor = await conn.execute(
        f"SELECT {_THRESHOLD_COLUMNS} FROM alert_thresholds WHERE id = %s{condition}",
        (to_uuid(id_),),
    )
    row = await cursor.fetchone()
    return _threshold(row) if row else None


async def count_thresholds(
    conn: Connection, *, wallet_id: int | None, budget_id: int | None
) -> int:
    cursor = await conn.execute(
        "SELECT count(*) FROM alert_thresholds WHERE removed_at IS NULL"
        " AND (wallet_id = %s OR budget_id = %s)",
        (to_uuid_or_none(wallet_id), to_uuid_or_none(budget_id)),
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def remove_threshold(conn: Connection, id_: int) -> bool:
    cursor = await conn.execute(
        "UPDATE alert_thresholds SET removed_at = now() WHERE id = %s AND removed_at IS NULL",
        (to_uuid(id_),),
    )
    return cursor.rowcount == 1


async def marks(conn: Connection, threshold_ids: Collection[int]) -> dict[tuple[int, int], Mark]:
    if not threshold_ids:
        return {}
    cursor = await conn.execute(
        "SELECT threshold_id, subject_id, armed, crossings FROM alert_threshold_marks"
        " WHERE threshold_id = ANY(%s)",
        (uuids(threshold_ids),),
    )
    return {
        (from_uuid(r[0]), from_uuid(r[1])): Mark(
            threshold_id=from_uuid(r[0]),
            subject_id=from_uuid(r[1]),
            armed=bool(r[2]),
            crossings=int(r[3]),
        )
        for r in await cursor.fetchall()
    }


async def save_marks(conn: Connection, rows: Sequence[Mark]) -> None:
    if not rows:
        return
    await conn.execute(
        """
        INSERT INTO alert_threshold_marks AS m (threshold_id, subject_id, armed, crossings)
        SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::boolean[], %s::bigint[])
        ON CONFLICT (threshold_id, subject_id)
        DO UPDATE SET armed = excluded.armed, crossings = excluded.crossings
        """,
        (
            uuids([r.threshold_id for r in rows]),
            uuids([r.subject_id for r in rows]),
            [r.armed for r in rows],
            [r.crossings for r in rows],
        ),
    )


async def last_allocations(conn: Connection, wallets: Collection[int]) -> dict[int, int]:
    """wallet -> the amount of its latest grant with source 'plan_allocation' (issued: not
    one being issued or abandoned)."""
    if not wallets:
        return {}
    cursor = await conn.execute(
        "SELECT DISTINCT ON (wallet_id) wallet_id, amount FROM grants"
        " WHERE wallet_id = ANY(%s) AND source = 'plan_allocation'"
        " AND state IN ('active', 'expired', 'voided')"
        " ORDER BY wallet_id, effective_at DESC, created_at DESC, id DESC",
        (uuids(wallets),),
    )
    return {from_uuid(r[0]): from_amount(r[1]) for r in await cursor.fetchall()}


# -- top-up rules and top-ups ---------------------------------------------------------------------

_RULE_COLUMNS: Final = (
    "wallet_id, threshold, amount, consideration_minor, currency, priority, expires_in_days,"
    " daily_max, enabled, armed, crossings, actor, created_at, updated_at"
)


def _rule(r: tuple[Any, ...]) -> Rule:
    return Rule(
        wallet_id=from_uuid(r[0]),
        threshold=from_amount(r[1]),
        amount=from_amount(r[2]),
        consideration_minor=int(r[3]),
        currency=r[4],
        priority=int(r[5]),
        expires_in_days=None if r[6] is None else int(r[6]),
        daily_max=int(r[7]),
        enabled=bool(r[8]),
        armed=bool(r[9]),
        crossings=int(r[10]),
        actor=r[11],
        created_at=r[12],
        updated_at=r[13],
    )


async def rules(conn: Connection, wallets: Collection[int]) -> dict[int, Rule]:
    """The enabled rules of these wallets."""
    if not wallets:
        return {}
    cursor = await conn.execute(
        f"SELECT {_RULE_COLUMNS} FROM top_up_rules WHERE wallet_id = ANY(%s) AND enabled",
        (uuids(wallets),),
    )
    return {rule.wallet_id: rule for rule in map(_rule, await cursor.fetchall())}


async def get_rule(conn: Connection, wallet_id: int, *, disabled: bool = False) -> Rule | None:
    """The wallet's enabled rule (or, with `disabled`, its rule either way)."""
    condition = "" if disabled else " AND enabled"
    cursor = await conn.execute(
        f"SELECT {_RULE_COLUMNS} FROM top_up_rules WHERE wallet_id = %s{condition}",
        (to_uuid(wallet_id),),
    )
    row = await cursor.fetchone()
    return _rule(row) if row else None


async def put_rule(
    conn: Connection,
    *,
    wallet_id: int,
    threshold: int,
    amount: int,
    consideration_minor: int,
    currency: str,
    priority: int,
    expires_in_days: int | None,
    daily_max: int,
    actor: str,
) -> None:
    """Sets the wallet's rule (enabled; its arming and crossings stay)."""
    await conn.execute(
        f"""
        INSERT INTO top_up_rules ({_RULE_COLUMNS})
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, true, true, 0, %s, now(), now())
        ON CONFLICT (wallet_id) DO UPDATE SET threshold = excluded.threshold,
            amount = excluded.amount, consideration_minor = excluded.consideration_minor,
            currency = excluded.currency, priority = excluded.priority,
            expires_in_days = excluded.expires_in_days, daily_max = excluded.daily_max,
            enabled = true, actor = excluded.actor, updated_at = now()
        """,
        (
            to_uuid(wallet_id),
            threshold,
            amount,
            consideration_minor,
            currency,
            priority,
            expires_in_days,
            daily_max,
            actor,
        ),
    )


async def disable_rule(conn: Connection, wallet_id: int) -> bool:
    cursor = await conn.execute(
        "UPDATE top_up_rules SET enabled = false, updated_at = now()"
        " WHERE wallet_id = %s AND enabled",
        (to_uuid(wallet_id),),
    )
    return cursor.rowcount == 1


async def save_rule_marks(conn: Connection, rows: Sequence[Rule]) -> None:
    for rule in rows:
        await conn.execute(
            "UPDATE top_up_rules SET armed = %s, crossings = %s WHERE wallet_id = %s",
            (rule.armed, rule.crossings, to_uuid(rule.wallet_id)),
        )


async def top_ups_on(conn: Connection, wallet_id: int, day: dt.date) -> int:
    """How many top-ups (pending or issued: capped ones issue nothing) the wallet has on `day`."""
    cursor = await conn.execute(
        "SELECT count(*) FROM top_ups WHERE wallet_id = %s AND day = %s"
        " AND state IN ('pending', 'issued')",
        (to_uuid(wallet_id), day),
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


_TOP_UP_COLUMNS: Final = (
    "id, wallet_id, crossing, state, threshold, amount, consideration_minor, currency, priority,"
    " expires_at, crossed_at, day, transfer_id, grant_id, created_at, issued_at, refusal"
)


def _top_up(r: tuple[Any, ...]) -> TopUp:
    return TopUp(
        id=from_uuid(r[0]),
        wallet_id=from_uuid(r[1]),
        crossing=int(r[2]),
        state=r[3],
        threshold=from_amount(r[4]),
        amount=from_amount(r[5]),
        consideration_minor=int(r[6]),
        currency=r[7],
        priority=int(r[8]),
        expires_at=r[9],
        crossed_at=r[10],
        day=r[11],
        transfer_id=from_uuid(r[12]),
        grant_id=from_uuid_or_none(r[13]),
        created_at=r[14],
        issued_at=r[15],
        refusal=r[16],
    )


async def insert_top_up(conn: Connection, top_up: TopUp) -> bool:
    cursor = await conn.execute(
        "INSERT INTO top_ups (id, wallet_id, crossing, state, threshold, amount,"
        " consideration_minor, currency, priority, expires_at, crossed_at, day, transfer_id)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (
            to_uuid(top_up.id),
            to_uuid(top_up.wallet_id),
            top_up.crossing,
            top_up.state,
            top_up.threshold,
            top_up.amount,
            top_up.consideration_minor,
            top_up.currency,
            top_up.priority,
            top_up.expires_at,
            top_up.crossed_at,
            top_up.day,
            to_uuid(top_up.transfer_id),
        ),
    )
    return cursor.rowcount == 1


async def pending_top_up_ids(conn: Connection, limit: int) -> list[int]:
    cursor = await conn.execute(
        "SELECT id FROM top_ups WHERE state = 'pending' ORDER BY created_at, id LIMIT %s",
        (limit,),
    )
    return [from_uuid(r[0]) for r in await cursor.fetchall()]


async def mark_issued(conn: Connection, id_: int, grant_id: int) -> bool:
    cursor = await conn.execute(
        "UPDATE top_ups SET state = 'issued', grant_id = %s, issued_at = now()"
        " WHERE id = %s AND state = 'pending'",
        (to_uuid(grant_id), to_uuid(id_)),
    )
    return cursor.rowcount == 1


async def mark_refused(conn: Connection, id_: int, refusal: str) -> bool:
    cursor = await conn.execute(
        "UPDATE top_ups SET state = 'refused', refusal = %s WHERE id = %s AND state = 'pending'",
        (refusal, to_uuid(id_)),
    )
    return cursor.rowcount == 1


async def get_top_up(conn: Connection, id_: int) -> TopUp | None:
    cursor = await conn.execute(
        f"SELECT {_TOP_UP_COLUMNS} FROM top_ups WHERE id = %s", (to_uuid(id_),)
    )
    row = await cursor.fetchone()
    return _top_up(row) if row else None


async def list_top_ups(
    conn: Connection,
    *,
    wallet_id: int,
    after: Keyset | None = None,
    limit: int = ROWS_PER_PAGE_DEFAULT,
) -> tuple[list[TopUp], bool]:
    """A page of the wallet's top-ups in (created_at, id) order, and whether more follow."""
    select = f"SELECT {_TOP_UP_COLUMNS} FROM top_ups"
    conditions = equal(wallet_id=to_uuid(wallet_id))
    return await fetch_page(conn, select, conditions, _top_up, after=after, limit=limit)


# -- expiry notices -------------------------------------------------------------------------------


async def expiring_blocks(
    conn: Connection, after: dt.datetime, through: dt.datetime, limit: int
) -> list[ExpiringBlock]:
    """Active blocks expiring in (after, through] that have no notice for their expiry yet, with
    what the projection says they have left, soonest first."""
    cursor = await conn.execute(
        """
        SELECT g.id, g.wallet_id, g.expires_at,
               coalesce((SELECT sum(e.amount - e.pending) FROM ledger_entries e
                         WHERE e.account_id = g.id), 0)
        FROM grants g
        WHERE g.state = 'active' AND g.expires_at > %s AND g.expires_at <= %s
          AND NOT EXISTS (SELECT 1 FROM grant_expiry_notices n
                          WHERE n.grant_id = g.id AND n.expires_at = g.expires_at)
        ORDER BY g.expires_at, g.id
        LIMIT %s
        """,
        (after, through, limit),
    )
    return [
        ExpiringBlock(from_uuid(r[0]), from_uuid(r[1]), r[2], from_amount(r[3]))
        for r in await cursor.fetchall()
    ]


async def insert_notice(
    conn: Connection, grant_id: int, expires_at: dt.datetime, credits: int
) -> bool:
    cursor = await conn.execute(
        "INSERT INTO grant_expiry_notices (grant_id, expires_at, credits) VALUES (%s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        (to_uuid(grant_id), expires_at, credits),
    )
    return cursor.rowcount == 1
