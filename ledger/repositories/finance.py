"""The finance subledger's tables (migration 0009): the poster's state and blocks, journals and
their lines, the promotional memo, periods and what a closed period keeps.

Journals, lines, memo rows and closed periods' balances are append-only (triggers refuse UPDATE,
DELETE and TRUNCATE); the poster writes a batch of them in one transaction with its state
(`finance/posting.py`), holding `finance_state`'s row lock, which closing a period takes too.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Collection, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import msgspec
from psycopg.types.json import Jsonb

from ledger.db import Connection
from ledger.repositories._copy import (
    NULL,
    copy_text,
    escaped,
    timestamp_us,
    uuid_hex,
    uuid_hex_or_null,
)
from ledger.repositories._rows import (
    HexIds,
    from_amount,
    from_uuid,
    hex_id,
    int_amounts,
    uuids,
)

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
    "rollover",
)


class State(msgspec.Struct, frozen=True):
    watermark_ts: int  # engine time of the last projected entry posted (0: none yet)
    seq: int  # the last journal or memo sequence number used
    journals: int


class BlockEntry(msgspec.Struct, frozen=True):
    """A projected entry on a block (ledger_entries, account_kind = 'block')."""

    transfer_id: int
    kind: str
    # The entry's business effective time, ns since the epoch (to the µs Postgres keeps).
    effective_at_ns: int
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
    # C in the functional currency when it is not C at the rate of receipt, rounded: a rollover
    # block's is what its source gave up (migration 0015). None: derived from C and the rate.
    functional_consideration_minor: int | None = None


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


class Journal(msgspec.Struct, frozen=True, gc=False):
    # Not tracked by the garbage collector (a batch makes thousands, and its tuples would have
    # it tracked): it holds numbers, dates, text and tuples of ids and of lines (which hold the
    # same), so it is in no cycle.
    id: int
    seq: int
    posting_period: dt.date
    accounting_date_ns: int  # ns since the epoch (the column keeps the µs)
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
    accounting_date_ns: int  # ns since the epoch (the column keeps the µs)
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


_ENTRIES_SQL: Final = f"""
    SELECT {hex_id("transfer_id")}, kind, (extract(epoch FROM effective_at) * 1000000)::bigint,
           engine_ts, credit_type_id,
           {hex_id("account_id")}, {hex_id("wallet_id")}, {hex_id("resource_id")},
           {hex_id("customer_id")}, {hex_id("operation_id")}, {hex_id("dimension_set_id")}, amount
    FROM ledger_entries
    WHERE engine_ts > %s AND engine_ts <= %s AND account_kind = 'block' AND amount <> 0
      AND kind = ANY(%s)
    ORDER BY engine_ts, transfer_id, kind
    LIMIT %s
"""


async def block_entries(
    conn: Connection, after_ts: int, through_ts: int, limit: int
) -> list[BlockEntry]:
    """Entries on blocks that moved posted credits, of engine time after_ts..through_ts, in
    engine time order (at most `limit`). Ids are read as hex text, amounts as ints and the
    effective time as µs (a batch is thousands of rows: no uuid.UUID, Decimal or datetime a
    value); a NULL id is 0."""
    cursor = int_amounts(conn.cursor())
    await cursor.execute(_ENTRIES_SQL, (after_ts, through_ts, list(BLOCK_KINDS), limit))
    # A batch's entries share their blocks, wallets, resources, customers and dimension sets.
    ids = HexIds()
    return [
        BlockEntry(
            int(transfer, 16),
            kind,
            effective_at_us * 1000,
            engine_ts,
            credit_type_id,
            ids[block],
            ids[wallet],
            ids[resource],
            ids[customer],
            int(operation, 16),
            ids[dimension_set],
            amount,
        )
        for (
            transfer,
            kind,
            effective_at_us,
            engine_ts,
            credit_type_id,
            block,
            wallet,
            resource,
            customer,
            operation,
            dimension_set,
            amount,
        ) in await cursor.fetchall()
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
    " functional_accrued_minor, granted_period, functional_consideration_minor"
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
        _int_or_none(r[21]),
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
            b.functional_consideration_minor,
        )
        for b in rows
    ]
    async with conn.cursor() as cursor:
        await cursor.executemany(
            f"INSERT INTO finance_blocks ({_BLOCK_COLUMNS}) VALUES ({', '.join(['%s'] * 22)})"
            " ON CONFLICT (block_id) DO UPDATE SET credits_out = excluded.credits_out,"
            " credits_used = excluded.credits_used, value_out_minor = excluded.value_out_minor,"
            " functional_out_minor = excluded.functional_out_minor,"
            " accrued_minor = excluded.accrued_minor,"
            " functional_accrued_minor = excluded.functional_accrued_minor",
            values,
        )


async def set_block_expiry(conn: Connection, block_id: int, expires_at: dt.datetime | None) -> bool:
    """A block's new expiry (a change of its grant's, in the same transaction): the aging
    report reads it. Take `lock_state` first, so that a poster batch that has read the grant's
    old row cannot insert the block after this. Closed periods' snapshots
    (finance_period_blocks) keep the expiry they were closed with. False: finance has not met
    the block yet (it reads the grant's row when it does)."""
    cursor = await conn.execute(
        "UPDATE finance_blocks SET expires_at = %s WHERE block_id = %s",
        (expires_at, _uuid(block_id)),
    )
    return cursor.rowcount > 0


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
    # The next month's too, so that a month's first journal rarely creates its partition.
    months = {j.posting_period for j in journals}
    await _ensure_partitions(conn, months | {next_period(m) for m in months})
    journal_rows, line_rows = _journals_text(journals)
    await copy_text(conn, "finance_journals", _JOURNAL_COLUMNS, journal_rows)
    await copy_text(conn, "finance_journal_lines", _LINE_COLUMNS, line_rows)


async def insert_memo(conn: Connection, rows: Sequence[MemoRow]) -> None:
    if not rows:
        return
    await copy_text(conn, "finance_memo", _MEMO_COLUMNS, _memo_text(rows))


# The rows of the journals, their lines and the memo in COPY's text format (`_copy`). Kinds,
# accounts and currency codes are the code's own constants, with nothing to escape. What
# repeats from row to row (a block, a wallet, a month, an actor) is made into text once a batch
# (`_Texts`).


class _Texts(dict[Any, str]):
    """The text of each value asked for, made by `text` the first time."""

    def __init__(self, text: Callable[[Any], str]) -> None:
        super().__init__()
        self._text = text

    def __missing__(self, value: Any) -> str:
        made = self[value] = self._text(value)
        return made


def _journals_text(journals: Sequence[Journal]) -> tuple[bytes, bytes]:
    """The journals' rows and their lines' rows."""
    ids, blocks = _Texts(uuid_hex_or_null), _Texts(uuid_hex)
    periods, texts = _Texts(_date_or_null), _Texts(escaped)
    journal_rows = []
    line_rows = []
    for j in journals:
        journal, period = uuid_hex(j.id), periods[j.posting_period]
        journal_rows.append(
            f"{journal}\t{j.seq}\t{period}\t{timestamp_us(j.accounting_date_ns)}\t"
            f"{j.engine_ts}\t{j.kind}\t{blocks[j.block_id]}\t{ids[j.customer_id]}\t"
            f"{j.credit_type_id}\t{ids[j.wallet_id]}\t{ids[j.resource_id]}\t"
            f"{uuid_hex_or_null(j.operation_id)}\t{ids[j.dimension_set_id]}\t{j.currency}\t"
            f"{j.credits}\t{{{','.join([uuid_hex(t) for t in j.source_transfer_ids])}}}\t"
            f"{texts[j.actor]}\t{texts[j.reason]}\t{periods[j.adjusts_period]}\n"
        )
        head = f"{journal}\t{period}\t"
        for line in j.lines:
            debit, credit = line.functional_debit_minor, line.functional_credit_minor
            line_rows.append(
                f"{head}{line.line}\t{line.account}\t{line.debit_minor}\t{line.credit_minor}\t"
                f"{NULL if debit is None else debit}\t{NULL if credit is None else credit}\n"
            )
    return "".join(journal_rows).encode(), "".join(line_rows).encode()


def _memo_text(rows: Sequence[MemoRow]) -> bytes:
    ids, blocks, periods = _Texts(uuid_hex_or_null), _Texts(uuid_hex), _Texts(_date_or_null)
    return "".join(
        [
            f"{uuid_hex(m.id)}\t{m.seq}\t{periods[m.posting_period]}\t"
            f"{timestamp_us(m.accounting_date_ns)}\t{m.engine_ts}\t{m.kind}\t"
            f"{blocks[m.block_id]}\t{ids[m.customer_id]}\t{m.credit_type_id}\t{m.credits}\t"
            f"{uuid_hex(m.transfer_id)}\t{periods[m.adjusts_period]}\n"
            for m in rows
        ]
    ).encode()


def _date_or_null(value: dt.date | None) -> str:
    return NULL if value is None else value.isoformat()


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


async def period_for_update(conn: Connection, period: dt.date) -> Period | None:
    """A closed or locked month's row, locked until the transaction ends (two locks of one
    month run one after the other)."""
    cursor = await conn.execute(
        f"SELECT {_PERIOD_COLUMNS} FROM finance_periods WHERE period_start = %s FOR UPDATE",
        (period,),
    )
    r = await cursor.fetchone()
    return None if r is None else Period(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7])


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


# -- balances of a period ------------------------------------------------------------------------


class BlockBalanceRow(msgspec.Struct, frozen=True):
    block_id: int
    customer_id: int
    credit_type_id: int
    currency: str
    expires_at: dt.datetime | None
    opening_minor: int
    recognized_minor: int
    remaining_minor: int
    functional_remaining_minor: int | None


class CategoryTotals(msgspec.Struct, frozen=True):
    """A period's net change of the contract liability (2100) per currency and category."""

    currency: str
    additions_minor: int
    usage_minor: int
    breakage_minor: int
    refunds_minor: int
    adjustments_minor: int


async def stored_blocks(
    conn: Connection, period: dt.date, customer_id: int | None
) -> list[BlockBalanceRow]:
    """What a closed period kept of its blocks."""
    cursor = await conn.execute(
        """
        SELECT block_id, customer_id, credit_type_id, currency, expires_at, opening_minor,
               recognized_minor, remaining_minor, functional_remaining_minor
        FROM finance_period_blocks
        WHERE period_start = %s AND (%s::uuid IS NULL OR customer_id = %s::uuid)
        ORDER BY block_id
        """,
        (period, *_customer(customer_id)),
    )
    return [_balance(r) for r in await cursor.fetchall()]


async def computed_blocks(
    conn: Connection,
    period: dt.date,
    base: dt.date | None,
    customer_id: int | None,
) -> list[BlockBalanceRow]:
    """Each paid block's obligation at the start and end of an open `period`: what the closed
    period `base` kept (none: nothing before), plus the 2100 lines of the periods after it up to
    `period` (only those: the journals are partitioned by period)."""
    cursor = await conn.execute(
        """
        WITH base AS (
            SELECT block_id, remaining_minor AS amount, functional_remaining_minor AS f_amount
            FROM finance_period_blocks WHERE period_start = %(base)s
        ), moves AS (
            SELECT j.block_id,
                   coalesce(sum(l.credit_minor - l.debit_minor)
                       FILTER (WHERE l.account = '2100' AND j.posting_period < %(period)s), 0)
                       AS before,
                   coalesce(sum(l.credit_minor - l.debit_minor)
                       FILTER (WHERE l.account = '2100' AND j.posting_period = %(period)s), 0)
                       AS during,
                   coalesce(sum(coalesce(l.functional_credit_minor, 0)
                                - coalesce(l.functional_debit_minor, 0))
                       FILTER (WHERE l.account = '2100'), 0) AS f_during,
                   coalesce(sum(l.credit_minor - l.debit_minor)
                       FILTER (WHERE l.account IN ('4000', '4050')
                               AND j.posting_period = %(period)s), 0) AS recognized,
                   bool_or(j.posting_period = %(period)s) AS moved
            FROM finance_journals j
            JOIN finance_journal_lines l
              ON l.posting_period = j.posting_period AND l.journal_id = j.id
            WHERE j.posting_period > coalesce(%(base)s::date, '-infinity'::date)
              AND j.posting_period <= %(period)s
            GROUP BY j.block_id
        ), blocks AS (
            SELECT coalesce(m.block_id, b.block_id) AS block_id,
                   coalesce(b.amount, 0) + coalesce(m.before, 0) AS opening,
                   coalesce(m.during, 0) AS during,
                   coalesce(m.recognized, 0) AS recognized,
                   b.f_amount, coalesce(m.f_during, 0) AS f_during,
                   coalesce(m.moved, false) AS moved
            FROM moves m FULL JOIN base b ON b.block_id = m.block_id
        )
        SELECT x.block_id, fb.customer_id, fb.credit_type_id, fb.currency, fb.expires_at,
               x.opening, x.recognized, x.opening + x.during,
               CASE WHEN fb.functional_out_minor IS NULL THEN NULL
                    ELSE coalesce(x.f_amount, 0) + x.f_during END
        FROM blocks x JOIN finance_blocks fb ON fb.block_id = x.block_id
        WHERE (x.opening <> 0 OR x.opening + x.during <> 0 OR x.moved)
          AND (%(customer)s::uuid IS NULL OR fb.customer_id = %(customer)s::uuid)
        ORDER BY x.block_id
        """,
        {"base": base, "period": period, "customer": _customer(customer_id)[0]},
    )
    return [_balance(r) for r in await cursor.fetchall()]


async def category_totals(
    conn: Connection, period: dt.date, customer_id: int | None
) -> list[CategoryTotals]:
    """The period's 2100 movements per currency and category: additions (purchases), usage,
    breakage, refunds (as decreases), adjustments (corrections and prior-period adjustments,
    signed increases)."""
    cursor = await conn.execute(
        """
        SELECT j.currency,
               sum(l.credit_minor - l.debit_minor) FILTER (
                   WHERE j.kind = 'purchase' AND j.adjusts_period IS NULL),
               sum(l.debit_minor - l.credit_minor) FILTER (
                   WHERE j.kind = 'usage' AND j.adjusts_period IS NULL),
               sum(l.debit_minor - l.credit_minor) FILTER (
                   WHERE j.kind = 'breakage' AND j.adjusts_period IS NULL),
               sum(l.debit_minor - l.credit_minor) FILTER (
                   WHERE j.kind = 'refund' AND j.adjusts_period IS NULL),
               sum(l.credit_minor - l.debit_minor) FILTER (
                   WHERE j.kind = 'correction' OR j.adjusts_period IS NOT NULL)
        FROM finance_journals j
        JOIN finance_journal_lines l ON l.posting_period = j.posting_period AND l.journal_id = j.id
        WHERE j.posting_period = %s AND l.account = '2100'
          AND (%s::uuid IS NULL OR j.customer_id = %s::uuid)
        GROUP BY j.currency ORDER BY j.currency
        """,
        (period, *_customer(customer_id)),
    )
    return [CategoryTotals(r[0], *(int(v or 0) for v in r[1:])) for r in await cursor.fetchall()]


async def stored_balances(conn: Connection, period: dt.date) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(
        "SELECT currency, opening_minor, additions_minor, usage_minor, breakage_minor,"
        " refunds_minor, adjustments_minor, closing_minor, from_opening_minor"
        " FROM finance_period_balances WHERE period_start = %s ORDER BY currency",
        (period,),
    )
    return list(await cursor.fetchall())


def _customer(customer_id: int | None) -> tuple[str | None, str | None]:
    value = None if customer_id is None else _uuid(customer_id)
    return value, value


def _balance(r: tuple[Any, ...]) -> BlockBalanceRow:
    return BlockBalanceRow(
        from_uuid(r[0]),
        _id(r[1]),
        int(r[2]),
        r[3] or "",
        r[4],
        int(r[5]),
        int(r[6]),
        int(r[7]),
        _int_or_none(r[8]),
    )


# -- closing -------------------------------------------------------------------------------------


async def active_periods(conn: Connection) -> list[dt.date]:
    """Months with journals or memo rows (the partitions' bounds, then a look inside)."""
    cursor = await conn.execute(
        "SELECT DISTINCT posting_period FROM finance_journals"
        " UNION SELECT DISTINCT posting_period FROM finance_memo ORDER BY 1"
    )
    return [r[0] for r in await cursor.fetchall()]


async def booked_before(conn: Connection, period: dt.date) -> bool:
    cursor = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM finance_journals WHERE posting_period < %s)"
        " OR EXISTS (SELECT 1 FROM finance_memo WHERE posting_period < %s)",
        (period, period),
    )
    row = await cursor.fetchone()
    return bool(row and row[0])


async def unswept_blocks(conn: Connection, end_ns: int) -> list[int]:
    """Blocks expired before `end_ns` that still have available credits (posted, not held):
    the expiry sweep has not moved them yet. Only blocks with credits left are looked at."""
    cursor = await conn.execute(
        """
        SELECT fb.block_id
        FROM finance_blocks fb
        WHERE fb.expires_at < timestamptz 'epoch' + %s * interval '1 microsecond'
          AND fb.credits_out < fb.credits
          AND fb.credits - fb.credits_out > (
              SELECT coalesce(sum(e.pending), 0) FROM ledger_entries e
              WHERE e.account_id = fb.block_id)
        """,
        (end_ns // 1000,),
    )
    return [from_uuid(r[0]) for r in await cursor.fetchall()]


async def unbalanced_journals(conn: Connection, period: dt.date) -> int:
    """Journals of `period` whose lines do not balance (or have fewer than two)."""
    cursor = await conn.execute(
        """
        SELECT count(*) FROM (
            SELECT j.id
            FROM finance_journals j
            LEFT JOIN finance_journal_lines l
              ON l.posting_period = j.posting_period AND l.journal_id = j.id
            WHERE j.posting_period = %s
            GROUP BY j.id
            HAVING count(l.line) < 2
                OR coalesce(sum(l.debit_minor), 0) <> coalesce(sum(l.credit_minor), 0)
                OR coalesce(sum(l.functional_debit_minor), 0)
                   <> coalesce(sum(l.functional_credit_minor), 0)
        ) bad
        """,
        (period,),
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def last_projection_check_clean(conn: Connection) -> bool:
    cursor = await conn.execute("SELECT clean FROM projection_checks ORDER BY id DESC LIMIT 1")
    row = await cursor.fetchone()
    return bool(row and row[0])


class BlockDifference(msgspec.Struct, frozen=True):
    block_id: int
    projection_balance: int  # the block's posted balance: its entries' amounts summed
    finance_balance: int  # credits - credits_out of finance_blocks
    liability_minor: int | None  # paid: the journals' 2100 net for the block
    expected_liability_minor: int | None  # paid: consideration - value(D) - accrued


async def liabilities(
    conn: Connection, ids: Collection[int], base: dt.date | None
) -> dict[int, int]:
    """Per paid block among `ids`, its journals' 2100 balance (credits - debits) now: what the
    closed period `base` kept of it, plus the 2100 lines of the periods after `base` (only
    those partitions are read; None: no period is closed, every one is)."""
    if not ids:
        return {}
    cursor = await conn.execute(
        """
        WITH kept AS (
            SELECT block_id, remaining_minor AS amount FROM finance_period_blocks
            WHERE period_start = %(base)s AND block_id = ANY(%(ids)s)
        ), since AS (
            SELECT j.block_id, sum(l.credit_minor - l.debit_minor) AS amount
            FROM finance_journals j
            JOIN finance_journal_lines l
              ON l.posting_period = j.posting_period AND l.journal_id = j.id
            WHERE j.block_id = ANY(%(ids)s) AND l.account = '2100'
              AND j.posting_period > coalesce(%(base)s::date, '-infinity'::date)
              AND l.posting_period > coalesce(%(base)s::date, '-infinity'::date)
            GROUP BY j.block_id
        )
        SELECT coalesce(k.block_id, s.block_id), coalesce(k.amount, 0) + coalesce(s.amount, 0)
        FROM kept k FULL JOIN since s ON s.block_id = k.block_id
        """,
        {"base": base, "ids": uuids(ids)},
    )
    return {from_uuid(r[0]): int(r[1]) for r in await cursor.fetchall()}


async def block_differences(
    conn: Connection, period: dt.date, watermark_ts: int, base: dt.date | None
) -> list[BlockDifference]:
    """The blocks with journals or memo rows in `period` whose projection (entries up to the
    poster's watermark, read by block) and finance state differ, or whose journals' 2100
    balance (`liabilities`, from the closed period `base` on) is not what the block's state
    says is still owed."""
    cursor = await conn.execute(
        """
        WITH moved AS (
            SELECT DISTINCT block_id FROM finance_journals WHERE posting_period = %(period)s
            UNION SELECT DISTINCT block_id FROM finance_memo WHERE posting_period = %(period)s
        )
        SELECT fb.block_id, fb.category,
               (SELECT coalesce(sum(e.amount), 0) FROM ledger_entries e
                WHERE e.account_id = m.block_id AND e.engine_ts <= %(watermark)s),
               fb.credits - fb.credits_out,
               fb.consideration_minor - fb.value_out_minor - fb.accrued_minor
        FROM moved m JOIN finance_blocks fb ON fb.block_id = m.block_id
        ORDER BY fb.block_id
        """,
        {"period": period, "watermark": watermark_ts},
    )
    rows = await cursor.fetchall()
    owed = await liabilities(conn, [from_uuid(r[0]) for r in rows if r[1] == "paid"], base)
    differences = []
    for block, category, projected, left, expected in rows:
        block_id = from_uuid(block)
        paid = category == "paid"
        liability = owed.get(block_id, 0) if paid else None
        if from_amount(projected) != from_amount(left) or (paid and liability != int(expected)):
            differences.append(
                BlockDifference(
                    block_id,
                    from_amount(projected),
                    from_amount(left),
                    liability,
                    int(expected) if paid else None,
                )
            )
    return differences


async def insert_period(
    conn: Connection,
    period: Period,
    blocks: Sequence[BlockBalanceRow],
    balances: Sequence[tuple[Any, ...]],
) -> None:
    """Records a closed month with what it keeps (one transaction with the checks)."""
    await conn.execute(
        f"INSERT INTO finance_periods ({_PERIOD_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            period.period_start,
            period.state,
            period.closed_at,
            period.closed_by,
            period.locked_at,
            period.locked_by,
            period.watermark_ts,
            Jsonb(period.checks),
        ),
    )
    statement = (
        "COPY finance_period_blocks (period_start, block_id, customer_id, credit_type_id,"
        " currency, expires_at, opening_minor, recognized_minor, remaining_minor,"
        " functional_remaining_minor) FROM STDIN"
    )
    async with conn.cursor() as cursor, cursor.copy(statement) as copy:
        for b in blocks:
            await copy.write_row(
                (
                    period.period_start,
                    _uuid(b.block_id),
                    _uuid_or_none(b.customer_id),
                    b.credit_type_id,
                    b.currency,
                    b.expires_at,
                    b.opening_minor,
                    b.recognized_minor,
                    b.remaining_minor,
                    b.functional_remaining_minor,
                )
            )
    async with conn.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO finance_period_balances (period_start, currency, opening_minor,"
            " additions_minor, usage_minor, breakage_minor, refunds_minor, adjustments_minor,"
            " closing_minor, from_opening_minor) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(period.period_start, *row) for row in balances],
        )


async def lock_period(conn: Connection, period: dt.date, actor: str, at: dt.datetime) -> Period:
    cursor = await conn.execute(
        "UPDATE finance_periods SET state = 'locked', locked_at = %s, locked_by = %s"
        f" WHERE period_start = %s AND state = 'closed' RETURNING {_PERIOD_COLUMNS}",
        (at, actor, period),
    )
    r = await cursor.fetchone()
    assert r is not None, period
    return Period(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7])
