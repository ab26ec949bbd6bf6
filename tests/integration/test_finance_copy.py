"""The finance poster's read of the projection and its COPY text (ledger/repositories/finance.py):
`block_entries` gives what the usual conversions give (`from_uuid`, a NULL id as 0,
`from_amount`, the effective time to the ns), and the journals, their lines and the memo store
exactly what psycopg's adapters store for the same values (NULLs, ids at the edges of u128,
amounts of 40 digits, dates and instants at the edges, text that COPY must escape)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from ledger import db
from ledger.clock import datetime_of_ns, ns_of_datetime
from ledger.limits import U128_MAX
from ledger.repositories import finance as repo
from ledger.repositories._rows import HexIds, from_amount, from_uuid, hex_id

pytestmark = pytest.mark.anyio

U63_MAX = 2**63 - 1
NUMERIC_40_MAX = 10**40 - 1
JANUARY = dt.date(2025, 1, 1)
# Instants (ns since the epoch): the epoch, just before it, below the µs (dropped), the last
# ns of a month, the first and last µs a datetime holds.
INSTANTS_NS = [
    0,
    -1,
    1_736_499_600_123_456_789,
    ns_of_datetime(dt.datetime(2025, 2, 1, tzinfo=dt.UTC)) - 1,
    ns_of_datetime(dt.datetime(1, 1, 1, tzinfo=dt.UTC)),
    ns_of_datetime(dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC)) + 999,
]
# Text COPY must escape (its delimiter, line ends, backslash, what reads as NULL or the end of
# the data when not escaped), and text that needs nothing.
TEXTS = ["a\tb", "back\\slash\nnew\rline", "\\N", "\\.", "café €", "", "runtime"]


async def test_hex_ids_are_the_uuids_ints_parsed_once(conn: db.Connection) -> None:
    values = [U128_MAX, 1, 2**127, 2**64, U128_MAX, 0, 1]
    cursor = await conn.execute(
        f"SELECT {hex_id('u')}, u FROM unnest(%s::uuid[]) WITH ORDINALITY AS x (u, n) ORDER BY n",
        ([_uuid(v) for v in values],),
    )
    rows = await cursor.fetchall()
    ids = HexIds()
    assert [ids[text] for text, _ in rows] == [0 if u is None else from_uuid(u) for _, u in rows]
    assert [ids[text] for text, _ in rows] == values
    assert len(ids) == len(set(values))


@pytest.fixture
def partitions() -> Iterator[None]:
    """The journals' partitions a test creates go with its rolled-back transaction."""
    repo.forget_partitions()
    yield
    repo.forget_partitions()


def _uuid(value: int) -> uuid.UUID | None:
    return None if value == 0 else uuid.UUID(int=value)


async def _adapted(
    conn: db.Connection, table: str, columns: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    """The rows COPYed through psycopg's adapters (the poster's memo before it wrote text)."""
    async with conn.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            await copy.write_row(row)


async def _stored(conn: db.Connection, table: str, order: str) -> list[str]:
    cursor = await conn.execute(f"SELECT t::text FROM {table} t ORDER BY {order}")
    return [row[0] for row in await cursor.fetchall()]


def _memo_rows() -> list[repo.MemoRow]:
    ids = [U128_MAX, 1, 2**127, 2**64, 0x0123456789ABCDEF_FEDCBA9876543210, 2]
    return [
        repo.MemoRow(
            id=ids[i],
            seq=(U63_MAX, 1, 2, 3, 4, 5)[i],
            posting_period=(JANUARY, dt.date(1, 1, 1), dt.date(9999, 12, 1))[i % 3],
            accounting_date_ns=at_ns,
            engine_ts=(1, U63_MAX)[i % 2],
            kind=("granted", "consumed", "expired", "voided", "restored", "refunded")[i],
            block_id=ids[-1 - i],
            customer_id=(0, U128_MAX, 1)[i % 3],
            credit_type_id=(1, 2**32 - 1)[i % 2],
            credits=(1, U128_MAX, NUMERIC_40_MAX)[i % 3],
            transfer_id=ids[(i + 2) % len(ids)],
            adjusts_period=(None, dt.date(2024, 12, 1))[i % 2],
        )
        for i, at_ns in enumerate(INSTANTS_NS)
    ]


async def test_the_memo_stores_what_the_adapters_store(conn: db.Connection) -> None:
    rows = _memo_rows()
    await repo.insert_memo(conn, rows)
    await conn.execute("CREATE TEMP TABLE adapted_memo (LIKE finance_memo)")
    columns = repo._MEMO_COLUMNS
    await _adapted(
        conn,
        "adapted_memo",
        columns,
        [
            (
                _uuid(m.id),
                m.seq,
                m.posting_period,
                datetime_of_ns(m.accounting_date_ns),
                m.engine_ts,
                m.kind,
                uuid.UUID(int=m.block_id),
                _uuid(m.customer_id),
                m.credit_type_id,
                m.credits,
                uuid.UUID(int=m.transfer_id),
                m.adjusts_period,
            )
            for m in rows
        ],
    )
    stored = await _stored(conn, "finance_memo", "seq")
    assert stored == await _stored(conn, "adapted_memo", "seq")
    assert len(stored) == len(rows)
    cursor = await conn.execute(
        "SELECT customer_id IS NULL, accounting_date, credits FROM finance_memo ORDER BY seq"
    )
    by_seq = sorted(rows, key=lambda m: m.seq)
    assert await cursor.fetchall() == [
        (m.customer_id == 0, datetime_of_ns(m.accounting_date_ns), m.credits) for m in by_seq
    ]


def _journals() -> list[repo.Journal]:
    journals = []
    for i, at_ns in enumerate(INSTANTS_NS):
        functional = (None, 0, U63_MAX)[i % 3]
        journals.append(
            repo.Journal(
                id=(U128_MAX, 1, 2**127, 2**64, 3, 4)[i],
                seq=i + 1,
                posting_period=(JANUARY, dt.date(2024, 12, 1))[i % 2],
                accounting_date_ns=at_ns,
                engine_ts=(1, U63_MAX)[i % 2],
                kind=("purchase", "usage", "breakage", "refund", "correction", "rollover")[i],
                block_id=(1, U128_MAX)[i % 2],
                customer_id=(0, U128_MAX, 1)[i % 3],
                credit_type_id=(1, 2**32 - 1)[i % 2],
                wallet_id=(0, 2**127)[i % 2],
                resource_id=(U128_MAX, 0, 5)[i % 3],
                operation_id=(0, 1, U128_MAX)[i % 3],
                dimension_set_id=(2**64, 0)[i % 2],
                currency=("USD", "", "EUR")[i % 3],
                credits=(0, 1, U128_MAX, NUMERIC_40_MAX)[i % 4],
                source_transfer_ids=((U128_MAX,), (1, 2**64, U128_MAX))[i % 2],
                actor=TEXTS[i % len(TEXTS)],
                reason=TEXTS[(i + 3) % len(TEXTS)],
                adjusts_period=(None, dt.date(2024, 11, 1))[i % 2],
                lines=tuple(
                    repo.JournalLine(
                        line=number,
                        account=("2100", "4000", "4050")[number - 1],
                        debit_minor=(0, U63_MAX)[number % 2],
                        credit_minor=(U63_MAX, 0)[number % 2],
                        functional_debit_minor=functional,
                        functional_credit_minor=None if functional is None else 0,
                    )
                    for number in range(1, 2 + i % 2 + 1)
                ),
            )
        )
    return journals


@pytest.mark.usefixtures("partitions")
async def test_journals_and_their_lines_store_what_the_adapters_store(
    conn: db.Connection,
) -> None:
    journals = _journals()
    await repo.insert_journals(conn, journals)
    await conn.execute("CREATE TEMP TABLE adapted_journals (LIKE finance_journals)")
    await conn.execute("CREATE TEMP TABLE adapted_lines (LIKE finance_journal_lines)")
    await _adapted(
        conn,
        "adapted_journals",
        repo._JOURNAL_COLUMNS,
        [
            (
                uuid.UUID(int=j.id),
                j.seq,
                j.posting_period,
                datetime_of_ns(j.accounting_date_ns),
                j.engine_ts,
                j.kind,
                uuid.UUID(int=j.block_id),
                _uuid(j.customer_id),
                j.credit_type_id,
                _uuid(j.wallet_id),
                _uuid(j.resource_id),
                _uuid(j.operation_id),
                _uuid(j.dimension_set_id),
                j.currency,
                j.credits,
                [uuid.UUID(int=t) for t in j.source_transfer_ids],
                j.actor,
                j.reason,
                j.adjusts_period,
            )
            for j in journals
        ],
    )
    await _adapted(
        conn,
        "adapted_lines",
        repo._LINE_COLUMNS,
        [
            (
                uuid.UUID(int=j.id),
                j.posting_period,
                line.line,
                line.account,
                line.debit_minor,
                line.credit_minor,
                line.functional_debit_minor,
                line.functional_credit_minor,
            )
            for j in journals
            for line in j.lines
        ],
    )
    stored = await _stored(conn, "finance_journals", "seq")
    assert stored == await _stored(conn, "adapted_journals", "seq")
    assert len(stored) == len(journals)
    lines = await _stored(conn, "finance_journal_lines", "journal_id, line")
    assert lines == await _stored(conn, "adapted_lines", "journal_id, line")
    assert len(lines) == sum(len(j.lines) for j in journals)
    cursor = await conn.execute("SELECT actor, reason FROM finance_journals ORDER BY seq")
    assert await cursor.fetchall() == [(j.actor, j.reason) for j in journals]


async def test_block_entries_give_what_the_usual_conversions_give(conn: db.Connection) -> None:
    # Partitions of the months, made in the test's transaction (rolled back with it).
    for name, start, end in (("finance_copy_a", "1969-12-01", "1970-02-01"),
                             ("finance_copy_b", "2031-01-01", "2031-02-01")):  # fmt: skip
        await conn.execute(
            f"CREATE TABLE ledger_entries_{name} PARTITION OF ledger_entries"
            f" FOR VALUES FROM ('{start}') TO ('{end}')"
        )
    rows = [
        # (transfer, kind, effective_at, engine_ts, account, wallet, resource, customer,
        #  operation, dimension set, amount)
        (U128_MAX, "debit", "2031-01-02 03:04:05.678901+00", 10, 2**127, 1, 2, 3, 2**64, 4,
         -U128_MAX),
        (1, "grant", "1969-12-31 23:59:59.999999+00", 10, U128_MAX, None, None, None, None,
         None, NUMERIC_40_MAX),
        (2**64, "rollover", "1970-01-01 00:00:00+00", 2**62, 7, U128_MAX, U128_MAX, U128_MAX,
         U128_MAX, U128_MAX, -(2**63)),
        (5, "reserve", "2031-01-31 23:59:59.999999+00", 11, 8, 1, 1, 1, 1, None, 5),
        (6, "void", "2031-01-15 00:00:00+00", 12, 8, 1, 1, 1, 1, None, 0),
    ]  # fmt: skip
    for transfer, kind, at, ts, account, wallet, resource, customer, op, dims, amount in rows:
        await conn.execute(
            "INSERT INTO ledger_entries (transfer_id, kind, effective_at, engine_ts, code,"
            " credit_type_id, account_id, account_kind, wallet_id, resource_id, customer_id,"
            " operation_id, dimension_set_id, amount, pending, value_minor)"
            " VALUES (%s, %s, %s, %s, 1, 4294967295, %s, 'block', %s, %s, %s, %s, %s, %s, 0, 0)",
            (
                uuid.UUID(int=transfer),
                kind,
                at,
                ts,
                uuid.UUID(int=account),
                *(None if v is None else uuid.UUID(int=v) for v in (wallet, resource, customer)),
                *(None if v is None else uuid.UUID(int=v) for v in (op, dims)),
                amount,
            ),
        )
    plain = await conn.execute(
        "SELECT transfer_id, kind, effective_at, engine_ts, credit_type_id, account_id,"
        " wallet_id, resource_id, customer_id, operation_id, dimension_set_id, amount"
        " FROM ledger_entries WHERE account_kind = 'block' AND amount <> 0"
        " AND kind = ANY(%s) ORDER BY engine_ts, transfer_id, kind",
        (list(repo.BLOCK_KINDS),),
    )
    expected = [
        repo.BlockEntry(
            from_uuid(r[0]),
            r[1],
            ns_of_datetime(r[2]),
            int(r[3]),
            int(r[4]),
            from_uuid(r[5]),
            *(0 if v is None else from_uuid(v) for v in r[6:11]),
            from_amount(r[11]),
        )
        for r in await plain.fetchall()
    ]
    got = await repo.block_entries(conn, 0, 2**62, 100)
    assert got == expected
    # The reservation and the entry that moved nothing are not finance's.
    assert [(e.transfer_id, e.kind, e.amount) for e in got] == [
        (1, "grant", NUMERIC_40_MAX),
        (U128_MAX, "debit", -U128_MAX),
        (2**64, "rollover", -(2**63)),
    ]
    assert [e.effective_at_ns for e in got] == [
        -1000,
        ns_of_datetime(dt.datetime(2031, 1, 2, 3, 4, 5, 678_901, tzinfo=dt.UTC)),
        0,
    ]
    assert got[0].wallet_id == got[0].dimension_set_id == 0
    assert got[2].customer_id == got[2].dimension_set_id == U128_MAX
    assert await repo.block_entries(conn, 10, 2**62 - 1, 100) == []
