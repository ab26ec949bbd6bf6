"""The finance subledger's tables (migration 0009): the poster's state and blocks, journals and
their lines, the promotional memo, periods and what a closed period keeps.

Journals, lines, memo rows and closed periods' balances are append-only (triggers refuse UPDATE,
DELETE and TRUNCATE); the poster writes a batch of them in one transaction with its state
(`finance/posting.py`), holding `finance_state`'s row lock, which closing a period takes too.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import msgspec

from ledger.db import Connection
from ledger.repositories._rows import from_amount, from_uuid, uuids

# The kinds of projected entries on blocks that finance reads (ledger_entries.kind).
BLOCK_KINDS: Final = (
    "grant",
    "debit",
    "settle",
    "overdraft_repay",
    "expire",
    "void",
    "refund",
    "refund_out",
    "correction",
)


class State(msgspec.Struct, frozen=True):
    watermark_ts: int  # engine time of the last projected entry posted (0: none yet)
    seq: int  # the last journal or memo sequence number used
    journals: int


class BlockEntry(msgspec.Struct, frozen=True):
    """A projected entry on a block (ledger_entries, account_kind = 'block')."""

    transfer_id: int
    kind: str
    accounting_date: dt.datetime  # the entry's business effective time
    engine_ts: int
    credit_type_id: int
    block_id: int
    wallet_id: int
    resource_id: int
    customer_id: int
    operation_id: int
    dimension_set_id: int
    amount: int  # signed change of the block's posted balance


class GrantRow(msgspec.Struct, frozen=True):
    """What the catalog says of a block."""

    id: int
    wallet_id: int
    credit_type_id: int
    credits: int
    category: str
    consideration_minor: int
    currency: str | None
    exchange_rate: Decimal | None
    effective_at: dt.datetime
    expires_at: dt.datetime | None
    actor: str
    reason: str | None


class Block(msgspec.Struct, frozen=True):
    """A row of finance_blocks: a block's terms and where its recognition stands."""

    block_id: int
    customer_id: int
    wallet_id: int
    resource_id: int
    credit_type_id: int
    category: str
    currency: str | None
    credits: int
    consideration_minor: int
    exchange_rate: Decimal | None
    effective_at: dt.datetime
    expires_at: dt.datetime | None
    method: str
    rate: Decimal
    credits_out: int
    credits_used: int
    value_out_minor: int
    functional_out_minor: int | None
    accrued_minor: int
    functional_accrued_minor: int | None
    granted_period: dt.date


class Policy(msgspec.Struct, frozen=True):
    credit_type_id: int
    effective_from: dt.datetime
    method: str
    rate: Decimal


class JournalLine(msgspec.Struct, frozen=True):
    line: int
    account: str
    debit_minor: int
    credit_minor: int
    functional_debit_minor: int | None
    functional_credit_minor: int | None


class Journal(msgspec.Struct, frozen=True):
    id: int
    seq: int
    posting_period: dt.date
    accounting_date: dt.datetime
    engine_ts: int
    kind: str
    block_id: int
    customer_id: int
    credit_type_id: int
    wallet_id: int
    resource_id: int
    operation_id: int
    dimension_set_id: int
    currency: str
    credits: int
    source_transfer_ids: tuple[int, ...]
    actor: str
    reason: str
    adjusts_period: dt.date | None
    lines: tuple[JournalLine, ...]


class MemoRow(msgspec.Struct, frozen=True):
    id: int
    seq: int
    posting_period: dt.date
    accounting_date: dt.datetime
    engine_ts: int
    kind: str
    block_id: int
    customer_id: int
    credit_type_id: int
    credits: int
    transfer_id: int
    adjusts_period: dt.date | None


class Period(msgspec.Struct, frozen=True):
    period_start: dt.date
    state: str  # closed | locked
    closed_at: dt.datetime
    closed_by: str
    locked_at: dt.datetime | None
    locked_by: str | None
    watermark_ts: int
    checks: dict[str, Any]


# -- state -----------------------------------------------------------------------------------------


async def lock_state(conn: Connection) -> State:
    """The poster's state, row-locked until the transaction ends: posting and closing a period
    take this lock, so they run one at a time."""
    cursor = await conn.execute(
        "SELECT watermark_ts, seq, journals FROM finance_state WHERE name = 'finance' FOR UPDATE"
    )
    row = await cursor.fetchone()
    assert row is not None, "migration 0009 inserts the state row"
    return State(int(row[0]), int(row[1]), int(row[2]))


async def read_state(conn: Connection) -> State:
    cursor = await conn.execute(
        "SELECT watermark_ts, seq, journals FROM finance_state WHERE name = 'finance'"
    )
    row = await cursor.fetchone()
    assert row is not None, "migration 0009 inserts the state row"
    return State(int(row[0]), int(row[1]), int(row[2]))


async def advance(conn: Connection, state: State) -> None:
    await conn.execute(
        "UPDATE finance_state SET watermark_ts = %s, seq = %s, journals = %s, updated_at = now()"
        " WHERE name = 'finance'",
        (state.watermark_ts, state.seq, state.journals),
    )


# -- what the poster reads -------------------------------------------------------------------------


async def block_entries(
    conn: Connection, after_ts: int, through_ts: int, limit: int
) -> list[BlockEntry]:
    """Entries on blocks that moved posted credits, of engine time after_ts..through_ts, in
    engine time order (at most `limit`)."""
    cursor = await conn.execute(
        """
        SELECT transfer_id, kind, effective_at, engine_ts, credit_type_id, account_id, wallet_id,
               resource_id, customer_id, operation_id, dimension_set_id, amount
        FROM ledger_entries
        WHERE engine_ts > %s AND engine_ts <= %s AND account_kind = 'block' AND amount <> 0
          AND kind = ANY(%s)
        ORDER BY engine_ts, transfer_id, kind
        LIMIT %s
        """,
        (after_ts, through_ts, list(BLOCK_KINDS), limit),
    )
    return [
        BlockEntry(
            from_uuid(r[0]),
            r[1],
            r[2],
            int(r[3]),
            int(r[4]),
            from_uuid(r[5]),
            _id(r[6]),
            _id(r[7]),
            _id(r[8]),
            _id(r[9]),
            _id(r[10]),
            int(r[11]),
        )
        for r in await cursor.fetchall()
    ]


async def grant_rows(conn: Connection, ids: Collection[int]) -> dict[int, GrantRow]:
    if not ids:
        return {}
    cursor = await conn.execute(
        """
        SELECT id, wallet_id, credit_type_id, amount, category, consideration_minor, currency,
               exchange_rate, effective_at, expires_at, actor, reason
        FROM grants WHERE id = ANY(%s)
        """,
        (uuids(ids),),
    )
    return {
        from_uuid(r[0]): GrantRow(
            from_uuid(r[0]),
            from_uuid(r[1]),
            int(r[2]),
            from_amount(r[3]),
            r[4],
            int(r[5]),
            r[6],
            r[7],
            r[8],
            r[9],
            r[10],
            r[11],
        )
        for r in await cursor.fetchall()
    }


async def policies(conn: Connection) -> list[Policy]:
    cursor = await conn.execute(
        "SELECT credit_type_id, effective_from, method, rate FROM finance_breakage_policies"
        " ORDER BY credit_type_id, effective_from"
    )
    return [Policy(int(r[0]), r[1], r[2], r[3]) for r in await cursor.fetchall()]


async def add_policy(
    conn: Connection,
    *,
    credit_type_id: int,
    effective_from: dt.datetime,
    method: str,
    rate: Decimal,
    actor: str,
) -> None:
    await conn.execute(
        "INSERT INTO finance_breakage_policies"
        " (credit_type_id, effective_from, method, rate, actor) VALUES (%s, %s, %s, %s, %s)",
        (credit_type_id, effective_from, method, rate, actor),
    )


async def refunds(conn: Connection, operations: Collection[int]) -> dict[int, tuple[int, str, str]]:
    """refund operation -> (money returned in minor units, actor, reason)."""
    if not operations:
        return {}
    cursor = await conn.execute(
        "SELECT operation_id, refund_minor, actor, coalesce(reason, '') FROM grant_refunds"
        " WHERE operation_id = ANY(%s)",
        (uuids(operations),),
    )
    return {from_uuid(r[0]): (int(r[1]), r[2], r[3]) for r in await cursor.fetchall()}


async def audited(
    conn: Connection, action: str, objects: Collection[int]
) -> list[tuple[int, str, str, dict[str, Any]]]:
    """(object, actor, reason, details) of the audit log's `action` rows on `objects`."""
    if not objects:
        return []
    cursor = await conn.execute(
        "SELECT object_id, actor, coalesce(reason, ''), details FROM audit_log"
        " WHERE action = %s AND object_id = ANY(%s) ORDER BY id",
        (action, uuids(objects)),
    )
    return [(from_uuid(r[0]), r[1], r[2], r[3]) for r in await cursor.fetchall()]


async def usage_periods(conn: Connection, operations: Collection[int]) -> dict[int, dt.date]:
    """operation -> the earliest period its usage journals were posted in."""
    if not operations:
        return {}
    cursor = await conn.execute(
        "SELECT operation_id, min(posting_period) FROM finance_journals"
        " WHERE operation_id = ANY(%s) AND kind = 'usage' GROUP BY operation_id",
        (uuids(operations),),
    )
    return {from_uuid(r[0]): r[1] for r in await cursor.fetchall()}


# -- blocks ----------------------------------------------------------------------------------------

_BLOCK_COLUMNS: Final = (
    "block_id, customer_id, wallet_id, resource_id, credit_type_id, category, currency, credits,"
    " consideration_minor, exchange_rate, effective_at, expires_at, method, rate, credits_out,"
    " credits_used, value_out_minor, functional_out_minor, accrued_minor,"
    " functional_accrued_minor, granted_period"
)


async def blocks(conn: Connection, ids: Collection[int]) -> dict[int, Block]:
    if not ids:
        return {}
    cursor = await conn.execute(
        f"SELECT {_BLOCK_COLUMNS} FROM finance_blocks WHERE block_id = ANY(%s)", (uuids(ids),)
    )
    return {from_uuid(r[0]): _block(r) for r in await cursor.fetchall()}


def _block(r: tuple[Any, ...]) -> Block:
    return Block(
        from_uuid(r[0]),
        _id(r[1]),
        _id(r[2]),
        _id(r[3]),
        int(r[4]),
        r[5],
        r[6],
        from_amount(r[7]),
        int(r[8]),
        r[9],
        r[10],
        r[11],
        r[12],
        r[13],
        from_amount(r[14]),
        from_amount(r[15]),
        int(r[16]),
        _int_or_none(r[17]),
        int(r[18]),
        _int_or_none(r[19]),
        r[20],
    )


async def save_blocks(conn: Connection, rows: Sequence[Block]) -> None:
    """Inserts new blocks and moves known ones to their new state."""
    if not rows:
        return
    values = [
        (
            _uuid(b.block_id),
            _uuid_or_none(b.customer_id),
            _uuid_or_none(b.wallet_id),
            _uuid_or_none(b.resource_id),
            b.credit_type_id,
            b.category,
            b.currency,
            b.credits,
            b.consideration_minor,
            b.exchange_rate,
            b.effective_at,
            b.expires_at,
            b.method,
            b.rate,
            b.credits_out,
            b.credits_used,
            b.value_out_minor,
            b.functional_out_minor,
            b.accrued_minor,
            b.functional_accrued_minor,
            b.granted_period,
        )
        for b in rows
    ]
    async with conn.cursor() as cursor:
        await cursor.executemany(
            f"INSERT INTO finance_blocks ({_BLOCK_COLUMNS}) VALUES ({', '.join(['%s'] * 21)})"
            " ON CONFLICT (block_id) DO UPDATE SET credits_out = excluded.credits_out,"
            " credits_used = excluded.credits_used, value_out_minor = excluded.value_out_minor,"
            " functional_out_minor = excluded.functional_out_minor,"
            " accrued_minor = excluded.accrued_minor,"
            " functional_accrued_minor = excluded.functional_accrued_minor",
            values,
        )


# -- journals --------------------------------------------------------------------------------------

_JOURNAL_COLUMNS: Final = (
    "id, seq, posting_period, accounting_date, engine_ts, kind, block_id, customer_id,"
    " credit_type_id, wallet_id, resource_id, operation_id, dimension_set_id, currency, credits,"
    " source_transfer_ids, actor, reason, adjusts_period"
)
_LINE_COLUMNS: Final = (
    "journal_id, posting_period, line, account, debit_minor, credit_minor,"
    " functional_debit_minor, functional_credit_minor"
)
_MEMO_COLUMNS: Final = (
    "id, seq, posting_period, accounting_date, engine_ts, kind, block_id, customer_id,"
    " credit_type_id, credits, transfer_id, adjusts_period"
)
_PARTITIONED: Final = ("finance_journals", "finance_journal_lines")
_KNOWN: dict[str, set[str]] = {}


async def insert_journals(conn: Connection, journals: Sequence[Journal]) -> None:
    """COPYs new journals and their lines (the caller holds the poster's lock)."""
    if not journals:
        return
    await _ensure_partitions(conn, {j.posting_period for j in journals})
    async with conn.cursor() as cursor:
        async with cursor.copy(f"COPY finance_journals ({_JOURNAL_COLUMNS}) FROM STDIN") as copy:
            for j in journals:
                await copy.write_row(
                    (
                        _uuid(j.id),
                        j.seq,
                        j.posting_period,
                        j.accounting_date,
                        j.engine_ts,
                        j.kind,
                        _uuid(j.block_id),
                        _uuid_or_none(j.customer_id),
                        j.credit_type_id,
                        _uuid_or_none(j.wallet_id),
                        _uuid_or_none(j.resource_id),
                        _uuid_or_none(j.operation_id),
                        _uuid_or_none(j.dimension_set_id),
                        j.currency,
                        j.credits,
                        [_uuid(t) for t in j.source_transfer_ids],
                        j.actor,
                        j.reason,
                        j.adjusts_period,
                    )
                )
        async with cursor.copy(f"COPY finance_journal_lines ({_LINE_COLUMNS}) FROM STDIN") as copy:
            for j in journals:
                for line in j.lines:
                    await copy.write_row(
                        (
                            _uuid(j.id),
                            j.posting_period,
                            line.line,
                            line.account,
                            line.debit_minor,
                            line.credit_minor,
                            line.functional_debit_minor,
                            line.functional_credit_minor,
                        )
                    )


async def insert_memo(conn: Connection, rows: Sequence[MemoRow]) -> None:
    if not rows:
        return
    statement = f"COPY finance_memo ({_MEMO_COLUMNS}) FROM STDIN"
    async with conn.cursor() as cursor, cursor.copy(statement) as copy:
        for m in rows:
            await copy.write_row(
                (
                    _uuid(m.id),
                    m.seq,
                    m.posting_period,
                    m.accounting_date,
                    m.engine_ts,
                    m.kind,
                    _uuid(m.block_id),
                    _uuid_or_none(m.customer_id),
                    m.credit_type_id,
                    m.credits,
                    _uuid(m.transfer_id),
                    m.adjusts_period,
                )
            )


async def _ensure_partitions(conn: Connection, periods: set[dt.date]) -> None:
    """Creates the month partitions of the journals and their lines that do not exist yet."""
    database = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    known = _KNOWN.get(database)
    names = {period: f"y{period.year:04d}m{period.month:02d}" for period in periods}
    if known is None or not set(names.values()) <= known:
        cursor = await conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'finance_journal_lines'::regclass"
        )
        known = _KNOWN[database] = {row[0].rsplit("_", 1)[1] for row in await cursor.fetchall()}
    for period, suffix in sorted(names.items()):
        if suffix in known:
            continue
        end = next_period(period)
        for table in _PARTITIONED:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table}_{suffix} PARTITION OF {table}"
                f" FOR VALUES FROM ('{period.isoformat()}') TO ('{end.isoformat()}')"
            )
        known.add(suffix)


def forget_partitions() -> None:
    """Forgets the partitions this process knows of (after a test drops its database)."""
    _KNOWN.clear()


def next_period(period: dt.date) -> dt.date:
    return dt.date(period.year + period.month // 12, period.month % 12 + 1, 1)


# -- periods ---------------------------------------------------------------------------------------

_PERIOD_COLUMNS: Final = (
    "period_start, state, closed_at, closed_by, locked_at, locked_by, watermark_ts, checks"
)


async def periods(conn: Connection) -> list[Period]:
    """Every closed or locked period, oldest first (a month without a row is open)."""
    cursor = await conn.execute(
        f"SELECT {_PERIOD_COLUMNS} FROM finance_periods ORDER BY period_start"
    )
    return [
        Period(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7]) for r in await cursor.fetchall()
    ]


def _id(value: Any) -> int:
    return 0 if value is None else from_uuid(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _uuid(value: int) -> str:
    return str(uuid.UUID(int=value))


def _uuid_or_none(value: int) -> str | None:
    return None if value == 0 else _uuid(value)


def fraction(value: Decimal | None) -> Fraction | None:
    return None if value is None else Fraction(value)
