"""The alerts deriver's read of the projection (ledger/repositories/alerts.py, `read_entries`):
its ids read as hex text (`hex_id`) and its amounts read by psycopg's int loader
(`int_amounts`) are exactly what the usual reads give (`from_uuid`, `from_amount`, NULL ids
as 0), at the edges of their ranges."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from ledger import db
from ledger.limits import U128_MAX
from ledger.repositories import alerts as repo
from ledger.repositories._rows import from_amount, from_uuid, hex_id, int_amounts

pytestmark = pytest.mark.anyio

IDS = [0, 1, 2**63, 2**64 - 1, 2**64, 2**127, U128_MAX, 0x0123456789ABCDEF_FEDCBA9876543210]
# ledger_entries' amounts are numeric(40,0): u128 amounts and their negatives, and beyond.
AMOUNTS = [0, 1, -1, 2**63 - 1, 2**63, -(2**63), 2**64, U128_MAX, -U128_MAX, 10**40 - 1]


async def test_hex_ids_are_the_uuids_ints_and_null_is_zero(conn: db.Connection) -> None:
    values = [uuid.UUID(int=n) for n in IDS] + [None]
    query = "SELECT {} FROM unnest(%s::uuid[]) WITH ORDINALITY AS x (u, n) ORDER BY n"
    plain = await conn.execute(query.format("u"), (values,))
    expected = [0 if u is None else from_uuid(u) for (u,) in await plain.fetchall()]
    hexed = await conn.execute(query.format(hex_id("u")), (values,))
    got = [int(text, 16) for (text,) in await hexed.fetchall()]
    assert got == expected == [*IDS, 0]


async def test_int_amounts_are_the_decimals_ints(conn: db.Connection) -> None:
    values = [*AMOUNTS, None]
    query = "SELECT a FROM unnest(%s::numeric(40,0)[]) WITH ORDINALITY AS x (a, n) ORDER BY n"
    plain = await conn.execute(query, (values,))
    expected = [None if a is None else from_amount(a) for (a,) in await plain.fetchall()]
    cursor = int_amounts(conn.cursor())
    await cursor.execute(query, (values,))
    got = [a for (a,) in await cursor.fetchall()]
    assert got == expected == values
    assert all(type(a) is int for a in got[:-1])


async def test_int_amounts_refuse_a_fraction(conn: db.Connection) -> None:
    cursor = int_amounts(conn.cursor())
    await cursor.execute("SELECT 1.5::numeric")
    with pytest.raises(ValueError):
        await cursor.fetchall()


async def test_read_entries_gives_what_the_usual_conversions_give(conn: db.Connection) -> None:
    # A partition of the month, made in the test's transaction (rolled back with it).
    await conn.execute(
        "CREATE TABLE ledger_entries_alerts_read PARTITION OF ledger_entries"
        " FOR VALUES FROM ('2031-01-01') TO ('2031-02-01')"
    )
    effective_at = dt.datetime(2031, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    rows = [
        # (transfer, kind, engine_ts, account, account_kind, wallet, operation, reservation,
        #  amount, pending)
        (U128_MAX, "debit", 10, 2**127, "block", 1, 2**64, None, -U128_MAX, 0),
        (2**64, "reserve", 10, U128_MAX, "block", None, None, U128_MAX, 0, U128_MAX),
        (1, "budget_limit", 11, 7, "budget", None, 3, None, 10**40 - 1, -(10**40 - 1)),
        (2, "timeout", 2**62, 8, "overdraft", 5, None, 6, 2**63, -(2**63)),
    ]
    for transfer, kind, ts, account, account_kind, wallet, op, reservation, amount, pending in rows:
        await conn.execute(
            "INSERT INTO ledger_entries (transfer_id, kind, effective_at, engine_ts, code,"
            " credit_type_id, account_id, account_kind, wallet_id, operation_id, reservation_id,"
            " amount, pending, value_minor) VALUES (%s, %s, %s, %s, 1, 1, %s, %s, %s, %s, %s,"
            " %s, %s, 0)",
            (
                uuid.UUID(int=transfer),
                kind,
                effective_at,
                ts,
                uuid.UUID(int=account),
                account_kind,
                None if wallet is None else uuid.UUID(int=wallet),
                None if op is None else uuid.UUID(int=op),
                None if reservation is None else uuid.UUID(int=reservation),
                amount,
                pending,
            ),
        )
    plain = await conn.execute(
        "SELECT transfer_id, kind, engine_ts, account_id, account_kind, wallet_id, operation_id,"
        " reservation_id, amount, pending, (extract(epoch FROM effective_at) * 1000000)::bigint"
        " FROM ledger_entries WHERE engine_ts > 0 ORDER BY engine_ts, transfer_id, kind,"
        " account_id"
    )
    expected = [
        repo.AlertEntry(
            from_uuid(r[0]),
            r[1],
            int(r[2]),
            from_uuid(r[3]),
            r[4],
            0 if r[5] is None else from_uuid(r[5]),
            0 if r[6] is None else from_uuid(r[6]),
            0 if r[7] is None else from_uuid(r[7]),
            from_amount(r[8]),
            from_amount(r[9]),
            int(r[10]) * 1000,
        )
        for r in await plain.fetchall()
    ]
    got = await repo.read_entries(conn, 0, 2**62, 100)
    assert got == expected
    assert [(e.transfer_id, e.wallet_id, e.amount, e.pending) for e in got] == [
        (2**64, 0, 0, U128_MAX),
        (U128_MAX, 1, -U128_MAX, 0),
        (1, 0, 10**40 - 1, -(10**40 - 1)),
        (2, 5, 2**63, -(2**63)),
    ]
    assert got[0].effective_at_ns == int(effective_at.timestamp()) * 10**9 + 678_901_000
    assert (await repo.read_entries(conn, 10, 11, 100))[0].kind == "budget_limit"
