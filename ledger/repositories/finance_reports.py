"""What the finance reports read (finance/reports.py shapes it; finance/exports.py writes it).

Invariant: every query reads one period's rows. The journals, their lines and the memo are read
with `posting_period = %s` (the journals and their lines are partitioned by it: one partition);
per-block figures are read by block id, for the blocks that moved in the period only (the
blocks' primary key, `finance_journals_block_idx`, the projection's
`ledger_entries_account_idx`).
Rows come in a deterministic order, so that a closed period's export is the same bytes every time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Collection
from decimal import Decimal
from typing import Any, Final

import msgspec

from ledger.db import Connection
from ledger.repositories import finance
from ledger.repositories._rows import from_amount, from_uuid, from_uuid_or_none, uuids

# Rows fetched per round trip when streaming the journal lines.
STREAM_ROWS: Final = 2000


class LineRecord(msgspec.Struct, frozen=True):
    """One journal line with its journal's fields."""

    journal_id: int
    seq: int
    posting_period: dt.date
    accounting_date: dt.datetime
    kind: str
    line: int
    account: str
    debit_minor: int
    credit_minor: int
    functional_debit_minor: int | None
    functional_credit_minor: int | None
    currency: str
    credits: int
    block_id: int
    customer_id: int | None
    credit_type_id: int
    credit_type: str
    wallet_id: int | None
    resource_id: int | None
    operation_id: int | None
    source_transfer_ids: tuple[int, ...]
    actor: str
    reason: str
    adjusts_period: dt.date | None


class SummaryRecord(msgspec.Struct, frozen=True):
    """The lines of a period summed per account x currency x product."""

    account: str
    currency: str
    credit_type_id: int
    credit_type: str
    debit_minor: int
    credit_minor: int
    functional_debit_minor: int | None  # None: some line of the group has no functional amount
    functional_credit_minor: int | None
    lines: int


class RevenueRecord(msgspec.Struct, frozen=True):
    customer_id: int | None
    credit_type_id: int
    credit_type: str
    account: str
    currency: str
    debit_minor: int
    credit_minor: int
    lines: int


class MemoRecord(msgspec.Struct, frozen=True):
    block_id: int
    customer_id: int | None
    credit_type_id: int
    credit_type: str
    kind: str
    credits: int
    rows: int


class BlockTerms(msgspec.Struct, frozen=True):
    """A block's terms, fixed at its grant (finance_blocks)."""

    block_id: int
    category: str
    credits: int
    consideration_minor: int
    currency: str | None
    exchange_rate: Decimal | None
    effective_at: dt.datetime
    expires_at: dt.datetime | None
    method: str
    rate: Decimal
    credit_type: str


class BlockCheck(msgspec.Struct, frozen=True):
    """A block that moved in a period, as the projection, the poster and the journals see it."""

    block_id: int
    customer_id: int | None
    category: str | None  # None: the poster has no row for it
    currency: str | None
    projected_credits: int  # sum of its ledger_entries' amounts up to the finance watermark
    finance_credits: int | None  # credits - credits_out (finance_blocks)
    expected_liability_minor: int | None  # consideration - value_out - accrued
    journal_liability_minor: int  # its 2100 balance now: the last close kept, plus open periods


class ProjectionCheckRow(msgspec.Struct, frozen=True):
    id: int
    ran_at: dt.datetime
    from_ts: int
    through_ts: int
    clean: bool
    range_clean: bool
    differences: int


def _period_filter(customer_id: int | None, alias: str = "j") -> tuple[str, tuple[Any, ...]]:
    if customer_id is None:
        return "", ()
    return f" AND {alias}.customer_id = %s", (uuids([customer_id])[0],)


async def stream_lines(
    conn: Connection, period: dt.date, customer_id: int | None
) -> AsyncIterator[LineRecord]:
    """The period's journal lines in (seq, line) order, streamed through a server-side cursor
    (the caller's connection is in a transaction)."""
    where, params = _period_filter(customer_id)
    query = f"""
        SELECT j.id, j.seq, j.posting_period, j.accounting_date, j.kind, l.line, l.account,
               l.debit_minor, l.credit_minor, l.functional_debit_minor, l.functional_credit_minor,
               j.currency, j.credits, j.block_id, j.customer_id, j.credit_type_id,
               coalesce(ct.code, j.credit_type_id::text), j.wallet_id, j.resource_id,
               j.operation_id, j.source_transfer_ids, j.actor, j.reason, j.adjusts_period
        FROM finance_journals j
        JOIN finance_journal_lines l
          ON l.posting_period = j.posting_period AND l.journal_id = j.id
        LEFT JOIN credit_types ct ON ct.id = j.credit_type_id
        WHERE j.posting_period = %s AND l.posting_period = %s{where}
        ORDER BY j.seq, l.line
    """
    async with conn.cursor(name="finance_report_lines") as cursor:
        cursor.itersize = STREAM_ROWS
        await cursor.execute(query, (period, period, *params))
        async for r in cursor:
            yield LineRecord(
                from_uuid(r[0]),
                int(r[1]),
                r[2],
                r[3],
                r[4],
                int(r[5]),
                r[6],
                int(r[7]),
                int(r[8]),
                _int_or_none(r[9]),
                _int_or_none(r[10]),
                r[11],
                from_amount(r[12]),
                from_uuid(r[13]),
                from_uuid_or_none(r[14]),
                int(r[15]),
                r[16],
                from_uuid_or_none(r[17]),
                from_uuid_or_none(r[18]),
                from_uuid_or_none(r[19]),
                tuple(from_uuid(t) for t in r[20]),
                r[21],
                r[22],
                r[23],
            )


async def summary(
    conn: Connection, period: dt.date, customer_id: int | None
) -> list[SummaryRecord]:
    """The period's lines per account x currency x product, ordered by currency, account and
    product code."""
    where, params = _period_filter(customer_id)
    cursor = await conn.execute(
        f"""
        SELECT l.account, j.currency, j.credit_type_id,
               coalesce(min(ct.code), j.credit_type_id::text),
               sum(l.debit_minor), sum(l.credit_minor),
               CASE WHEN bool_and(l.functional_debit_minor IS NOT NULL)
                    THEN sum(l.functional_debit_minor) END,
               CASE WHEN bool_and(l.functional_credit_minor IS NOT NULL)
                    THEN sum(l.functional_credit_minor) END,
               count(*)
        FROM finance_journals j
        JOIN finance_journal_lines l
          ON l.posting_period = j.posting_period AND l.journal_id = j.id
        LEFT JOIN credit_types ct ON ct.id = j.credit_type_id
        WHERE j.posting_period = %s AND l.posting_period = %s{where}
        GROUP BY l.account, j.currency, j.credit_type_id
        """,
        (period, period, *params),
    )
    rows = [
        SummaryRecord(
            r[0],
            r[1],
            int(r[2]),
            r[3],
            int(r[4]),
            int(r[5]),
            _int_or_none(r[6]),
            _int_or_none(r[7]),
            int(r[8]),
        )
        for r in await cursor.fetchall()
    ]
    return sorted(rows, key=lambda s: (s.currency, s.account, s.credit_type, s.credit_type_id))


async def revenue(
    conn: Connection, period: dt.date, customer_id: int | None, accounts: Collection[str]
) -> list[RevenueRecord]:
    """The period's lines on the revenue accounts per customer x product x account x currency."""
    where, params = _period_filter(customer_id)
    cursor = await conn.execute(
        f"""
        SELECT j.customer_id, j.credit_type_id,
               coalesce(min(ct.code), j.credit_type_id::text), l.account, j.currency,
               sum(l.debit_minor), sum(l.credit_minor), count(*)
        FROM finance_journals j
        JOIN finance_journal_lines l
          ON l.posting_period = j.posting_period AND l.journal_id = j.id
        LEFT JOIN credit_types ct ON ct.id = j.credit_type_id
        WHERE j.posting_period = %s AND l.posting_period = %s AND l.account = ANY(%s){where}
        GROUP BY j.customer_id, j.credit_type_id, l.account, j.currency
        """,
        (period, period, list(accounts), *params),
    )
    rows = [
        RevenueRecord(
            from_uuid_or_none(r[0]), int(r[1]), r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7])
        )
        for r in await cursor.fetchall()
    ]
    return sorted(rows, key=lambda x: (x.customer_id or 0, x.credit_type, x.account, x.currency))


async def memo(conn: Connection, period: dt.date, customer_id: int | None) -> list[MemoRecord]:
    """The period's promotional memo per block x kind."""
    where, params = _period_filter(customer_id, "m")
    cursor = await conn.execute(
        f"""
        SELECT m.block_id, m.customer_id, m.credit_type_id,
               coalesce(min(ct.code), m.credit_type_id::text), m.kind, sum(m.credits), count(*)
        FROM finance_memo m
        LEFT JOIN credit_types ct ON ct.id = m.credit_type_id
        WHERE m.posting_period = %s{where}
        GROUP BY m.block_id, m.customer_id, m.credit_type_id, m.kind
        """,
        (period, *params),
    )
    rows = [
        MemoRecord(
            from_uuid(r[0]),
            from_uuid_or_none(r[1]),
            int(r[2]),
            r[3],
            r[4],
            from_amount(r[5]),
            int(r[6]),
        )
        for r in await cursor.fetchall()
    ]
    return sorted(rows, key=lambda m: (m.customer_id or 0, m.block_id, m.kind))


async def block_terms(conn: Connection, ids: Collection[int]) -> dict[int, BlockTerms]:
    """The terms of these blocks (those the poster has seen)."""
    if not ids:
        return {}
    cursor = await conn.execute(
        """
        SELECT b.block_id, b.category, b.credits, b.consideration_minor, b.currency,
               b.exchange_rate, b.effective_at, b.expires_at, b.method, b.rate,
               coalesce(ct.code, b.credit_type_id::text)
        FROM finance_blocks b LEFT JOIN credit_types ct ON ct.id = b.credit_type_id
        WHERE b.block_id = ANY(%s)
        """,
        (uuids(ids),),
    )
    return {
        from_uuid(r[0]): BlockTerms(
            from_uuid(r[0]),
            r[1],
            from_amount(r[2]),
            int(r[3]),
            r[4],
            r[5],
            r[6],
            r[7],
            r[8],
            r[9],
            r[10],
        )
        for r in await cursor.fetchall()
    }


async def moved_blocks(conn: Connection, period: dt.date, customer_id: int | None) -> list[int]:
    """The blocks with a journal or a memo row in the period, in id order."""
    where_j, params_j = _period_filter(customer_id, "j")
    where_m, params_m = _period_filter(customer_id, "m")
    cursor = await conn.execute(
        f"""
        SELECT j.block_id FROM finance_journals j WHERE j.posting_period = %s{where_j}
        UNION
        SELECT m.block_id FROM finance_memo m WHERE m.posting_period = %s{where_m}
        ORDER BY 1
        """,
        (period, *params_j, period, *params_m),
    )
    return [from_uuid(r[0]) for r in await cursor.fetchall()]


async def block_checks(
    conn: Connection, ids: Collection[int], through_ts: int, base: dt.date | None
) -> list[BlockCheck]:
    """Per block: its projected posted balance up to `through_ts` (engine time, read by block),
    the poster's view of it, and its journals' 2100 balance now (`finance.liabilities`: what
    the closed period `base` kept, plus the open periods' lines)."""
    if not ids:
        return []
    cursor = await conn.execute(
        """
        WITH ids AS (SELECT unnest(%s::uuid[]) AS block_id),
        projected AS (
            SELECT e.account_id AS block_id, sum(e.amount) AS credits
            FROM ledger_entries e
            WHERE e.account_id = ANY(%s::uuid[]) AND e.account_kind = 'block'
              AND e.engine_ts <= %s
            GROUP BY e.account_id
        )
        SELECT ids.block_id, b.customer_id, b.category, b.currency,
               coalesce(p.credits, 0), b.credits - b.credits_out,
               b.consideration_minor - b.value_out_minor - b.accrued_minor
        FROM ids
        LEFT JOIN finance_blocks b ON b.block_id = ids.block_id
        LEFT JOIN projected p ON p.block_id = ids.block_id
        ORDER BY ids.block_id
        """,
        (uuids(ids), uuids(ids), through_ts),
    )
    rows = await cursor.fetchall()
    owed = await finance.liabilities(conn, ids, base)
    return [
        BlockCheck(
            from_uuid(r[0]),
            from_uuid_or_none(r[1]),
            r[2],
            r[3],
            from_amount(r[4]),
            None if r[5] is None else from_amount(r[5]),
            _int_or_none(r[6]),
            owed.get(from_uuid(r[0]), 0),
        )
        for r in rows
    ]


async def journal_liabilities(
    conn: Connection, ids: Collection[int], period: dt.date
) -> dict[int, int]:
    """Per block, its 2100 lines' credits - debits in `period` alone (read by block id)."""
    if not ids:
        return {}
    cursor = await conn.execute(
        """
        SELECT j.block_id, sum(l.credit_minor - l.debit_minor)
        FROM finance_journals j
        JOIN finance_journal_lines l
          ON l.posting_period = j.posting_period AND l.journal_id = j.id
        WHERE j.block_id = ANY(%s) AND j.posting_period = %s AND l.posting_period = %s
          AND l.account = '2100'
        GROUP BY j.block_id
        """,
        (uuids(ids), period, period),
    )
    return {from_uuid(r[0]): int(r[1]) for r in await cursor.fetchall()}


async def latest_projection_check(conn: Connection) -> ProjectionCheckRow | None:
    cursor = await conn.execute(
        "SELECT id, ran_at, from_ts, through_ts, clean, range_clean,"
        " jsonb_array_length(differences)"
        " FROM projection_checks ORDER BY id DESC LIMIT 1"
    )
    r = await cursor.fetchone()
    if r is None:
        return None
    return ProjectionCheckRow(int(r[0]), r[1], int(r[2]), int(r[3]), r[4], r[5], int(r[6]))


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
