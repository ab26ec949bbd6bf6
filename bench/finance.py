"""Finance benchmark: posting journals from a projection of 10 million entries, closing its
twelve months in order, and exporting every report of one month. Not a test: it prints times,
and which partitions each step read.

    python -m bench.finance                        # 10,000,000 entries
    python -m bench.finance --entries 500000       # a quick run
    python -m bench.finance --data-dir /tmp/fin-10m   # keep the database, and reuse it later

It starts a fresh embedded Postgres in a temporary directory, migrates it, and fills it:
- a catalog of 100 customers, a wallet each, and `--blocks-per-month` paid blocks per month
  (USD, 1,000,000 credits for $1,000.00 to $3,000.00, 1,000 of them per month by default),
  each effective on the 1st and expiring on the 1st of the next month;
- `--entries` projected entries over the twelve months of 2025, in engine time order: each
  block's grant, then debits of 1 to 997 credits spread over its month (about 830 per block
  at 10 million), then its expiry sweep at the next 1st with what is left: the rows the
  projection feed writes (`ledger_entries`), generated with generate_series, one month per
  transaction.

Then it measures, in this order:
1. the poster (`finance.posting.Poster.catch_up`): every entry to journals, entries/s;
2. closing each month in order (`finance.periods.close_period`, with its checks; the engine
   reconciliation is taken as the last recorded run, a clean one inserted here);
3. every report of June (`finance.exports.write_csv`, as `credit-ledger export` does), twice:
   the time, the rows, and whether the second export's bytes equal the first's;
4. for each step of 2 and 3, the rows Postgres read from each partition of the journals, their
   lines and the entries (pg_stat_user_tables' sequential and index reads, before and after),
   so that a report that reads more than its month shows.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import tempfile
import time
from pathlib import Path
from typing import Any

from finance import exports, periods
from finance.posting import Poster
from finance.reports import Layout, Report
from ledger import db
from ledger.clock import ns_of_datetime
from ledger.migrate import migrate
from ledger.repositories import finance as finance_repo

CUSTOMERS = 100
MONTHS = 12
YEAR = 2025
S = 1_000_000_000

CATALOG = [
    "INSERT INTO credit_types (id, code, name, asset_scale) VALUES (1, 'credits', 'Credits', 0)",
    """INSERT INTO customers (id, tenant, name)
       SELECT md5('c' || c)::uuid, c + 1, 'customer ' || c FROM generate_series(0, %(c)s - 1) c""",
    """INSERT INTO resources (id, customer_id, kind)
       SELECT md5('r' || c)::uuid, md5('c' || c)::uuid, 'subscription'
       FROM generate_series(0, %(c)s - 1) c""",
    """INSERT INTO wallets (id, resource_id, credit_type_id)
       SELECT md5('w' || c)::uuid, md5('r' || c)::uuid, 1 FROM generate_series(0, %(c)s - 1) c""",
    # Blocks: month m, number b; owned by customer b % CUSTOMERS.
    """INSERT INTO grants (id, wallet_id, credit_type_id, amount, category, consideration_minor,
                          currency, effective_at, expires_at, source, actor, state)
       SELECT md5('g' || m || '-' || b)::uuid, md5('w' || mod(b, %(c)s))::uuid, 1, 1000000,
              'paid', 100000 * (1 + mod(b, 3)), 'USD',
              make_timestamptz(%(year)s, m, 1, 0, 0, 0, 'UTC'),
              make_timestamptz(%(year)s, m, 1, 0, 0, 0, 'UTC') + interval '1 month',
              'purchase', 'bench', 'expired'
       FROM generate_series(1, %(months)s) m, generate_series(0, %(blocks)s - 1) b""",
]

# One month's entries. Engine time follows business time: ns since the epoch of the effective
# time, plus the entry's number, so that every entry has its own timestamp and they sort as they
# happened. Debit i of block b falls at (i + 1) / (n + 2) of the month.
MONTH_ENTRIES = """
WITH bounds AS (
    SELECT make_timestamptz(%(year)s, %(month)s, 1, 0, 0, 0, 'UTC') AS start,
           make_timestamptz(%(year)s, %(month)s, 1, 0, 0, 0, 'UTC') + interval '1 month' AS stop
), blocks AS (
    SELECT b, md5('g' || %(month)s || '-' || b)::uuid AS block,
           md5('w' || mod(b, %(c)s))::uuid AS wallet, md5('r' || mod(b, %(c)s))::uuid AS resource,
           md5('c' || mod(b, %(c)s))::uuid AS customer
    FROM generate_series(0, %(blocks)s - 1) b
), debits AS (
    SELECT k.block, k.wallet, k.resource, k.customer, k.b, i,
           1 + mod(i * 7919 + k.b * 104729, 997) AS credits
    FROM blocks k, generate_series(0, %(per_block)s - 1) i
), moves AS (
    SELECT block, wallet, resource, customer, 'grant' AS kind, 2 AS code, b, -1 AS i,
           1000000::numeric AS amount, (SELECT start FROM bounds) AS at
    FROM blocks
    UNION ALL
    SELECT block, wallet, resource, customer, 'debit', 3, b, i, -credits,
           (SELECT start + (stop - start) * (i + 1) / (%(per_block)s + 2) FROM bounds)
    FROM debits
)
INSERT INTO ledger_entries (transfer_id, kind, effective_at, engine_ts, code, credit_type_id,
    account_id, account_kind, wallet_id, resource_id, customer_id, operation_id, amount,
    pending, currency, value_minor)
SELECT md5('t' || %(month)s || '-' || b || '-' || i)::uuid, kind, at,
       (extract(epoch FROM at) * 1000000)::bigint * 1000 + b, code, 1, block, 'block', wallet,
       resource, customer, md5('o' || %(month)s || '-' || b || '-' || i)::uuid, amount, 0, 'USD',
       0
FROM moves
"""
# What is left of each block of the month, swept at its expiry (the next month's 1st).
MONTH_EXPIRIES = """
INSERT INTO ledger_entries (transfer_id, kind, effective_at, engine_ts, code, credit_type_id,
    account_id, account_kind, wallet_id, resource_id, customer_id, operation_id, amount,
    pending, currency, value_minor)
SELECT md5('x' || e.account_id::text)::uuid, 'expire', g.expires_at,
       (extract(epoch FROM g.expires_at) * 1000000)::bigint * 1000 + 500000
           + row_number() OVER (ORDER BY e.account_id),
       7, 1, e.account_id, 'block', min(e.wallet_id::text)::uuid, min(e.resource_id::text)::uuid,
       min(e.customer_id::text)::uuid, e.account_id, -sum(e.amount), 0, 'USD', 0
FROM ledger_entries e JOIN grants g ON g.id = e.account_id
WHERE e.effective_at >= make_timestamptz(%(year)s, %(month)s, 1, 0, 0, 0, 'UTC')
  AND e.effective_at < make_timestamptz(%(year)s, %(month)s, 1, 0, 0, 0, 'UTC') + interval '1 month'
GROUP BY e.account_id, g.expires_at
HAVING sum(e.amount) > 0
"""


def show(text: str) -> None:
    print(text, flush=True)


async def load(pool: db.Pool, entries: int, blocks: int) -> None:
    per_block = max(1, entries // (MONTHS * blocks) - 2)
    params: dict[str, Any] = {
        "c": CUSTOMERS,
        "year": YEAR,
        "months": MONTHS,
        "blocks": blocks,
        "per_block": per_block,
    }
    async with pool.connection() as conn, conn.transaction():
        for statement in CATALOG:
            await conn.execute(statement, params)
        for month in range(1, MONTHS + 2):
            start = dt.date(YEAR + (month - 1) // 12, (month - 1) % 12 + 1, 1)
            end = finance_repo.next_period(start)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS ledger_entries_y{start.year}m{start.month:02d}"
                f" PARTITION OF ledger_entries FOR VALUES FROM ('{start}') TO ('{end}')"
            )
    started = time.monotonic()
    for month in range(1, MONTHS + 1):
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(MONTH_ENTRIES, {**params, "month": month})
            await conn.execute(MONTH_EXPIRIES, {**params, "month": month})
        show(f"  loaded {month:2d}/{MONTHS} months ({time.monotonic() - started:.0f} s)")
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        await conn.execute("VACUUM ANALYZE ledger_entries")
        await conn.set_autocommit(False)
        cursor = await conn.execute("SELECT count(*), max(engine_ts) FROM ledger_entries")
        row = await cursor.fetchone()
        assert row is not None
        count, last_ts = int(row[0]), int(row[1])
        # The projection has read everything; its engine was seen past the year's end; its
        # reconciliation against the engine is clean (this benchmark has no engine).
        done_ns = ns_of_datetime(dt.datetime(YEAR + 1, 1, 2, tzinfo=dt.UTC))
        await conn.execute(
            "UPDATE projection_state SET watermark_ts = %s, entries = %s, caught_up_ns = %s",
            (last_ts, count, done_ns),
        )
        await conn.execute(
            "INSERT INTO projection_checks (from_ts, through_ts, clean, range_clean)"
            " VALUES (1, %s, true, true)",
            (last_ts,),
        )
    show(f"entries: {count:,} ({per_block} debits per block, {blocks} blocks a month)")


async def scans(pool: db.Pool) -> dict[str, int]:
    """Rows read so far from each partition of the journals, their lines and the entries
    (sequential reads plus rows fetched through an index)."""
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        cursor = await conn.execute(
            "SELECT relname, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
            " FROM pg_stat_user_tables WHERE relname ~ '^(finance_journals|finance_journal_lines"
            "|ledger_entries)_y'"
        )
        return {str(r[0]): int(r[1]) for r in await cursor.fetchall()}


def read_between(before: dict[str, int], after: dict[str, int]) -> str:
    """The partitions rows were read from, per table: month (YYMM) and rows."""
    read: dict[str, list[str]] = {}
    for name, count in sorted(after.items()):
        rows = count - before.get(name, 0)
        if rows > 0:
            table, month = name.rsplit("_y", 1)
            read.setdefault(table.replace("finance_", ""), []).append(
                f"{month[2:4]}{month[-2:]}:{rows:,}"
            )
    return "; ".join(f"{t} {' '.join(ms)}" for t, ms in read.items()) or "none"


async def post(pool: db.Pool) -> None:
    poster = Poster(pool)
    started = time.monotonic()
    entries = 0
    last = started
    while read := await poster.step():
        entries += read
        if time.monotonic() - last > 10:
            last = time.monotonic()
            show(f"  posted {entries:,} entries ({entries / (last - started):,.0f}/s)")
    took = time.monotonic() - started
    async with pool.connection() as conn:
        state = await finance_repo.read_state(conn)
    show(
        f"poster: {entries:,} entries -> {state.journals:,} journals in {took:.1f} s"
        f" ({entries / took:,.0f} entries/s)"
    )


async def close_all(pool: db.Pool) -> None:
    clock = ns_of_datetime(dt.datetime(YEAR + 1, 1, 2, tzinfo=dt.UTC))
    poster = Poster(pool)
    for month in range(1, MONTHS + 1):
        period = dt.date(YEAR, month, 1)
        before = await scans(pool)
        started = time.monotonic()
        await periods.close_period(
            pool, period, actor="bench", clock_ns=lambda: clock, poster=poster
        )
        took = time.monotonic() - started
        show(
            f"close {periods.period_text(period)}: {took * 1000:8.0f} ms"
            f"   read: {read_between(before, await scans(pool))}"
        )


async def export_all(pool: db.Pool, month: int) -> None:
    period = dt.date(YEAR, month, 1)
    for report in Report:
        layouts = list(Layout) if report is Report.SUMMARY_JOURNAL else [Layout.GENERIC]
        for layout in layouts:
            request = exports.ExportRequest(report=report, period=period, layout=layout)
            before = await scans(pool)
            started = time.monotonic()
            first = io.BytesIO()
            control = await exports.write_csv(pool, request, first)
            took = time.monotonic() - started
            read = read_between(before, await scans(pool))
            second = io.BytesIO()
            await exports.write_csv(pool, request, second)
            same = first.getvalue() == second.getvalue()
            name = report.value + ("" if layout is Layout.GENERIC else f" ({layout.value})")
            show(
                f"export {name:28} {took * 1000:8.0f} ms {control.rows:>9,} rows"
                f" {len(first.getvalue()) / 1e6:8.1f} MB  same bytes again: {same}   read: {read}"
            )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-finance-") as tmp:
        data_dir = (Path(args.data_dir) if args.data_dir else Path(tmp)) / "postgres"
        fresh = not (data_dir / "PG_VERSION").exists()
        conninfo = await asyncio.to_thread(db.start_embedded_postgres, data_dir)
        settings = db.DatabaseSettings(
            pool_min_size=1, pool_max_size=2, statement_timeout_ms=3_600_000
        )
        pool = await db.open_pool(settings, conninfo=conninfo)
        try:
            await migrate(pool)
            if fresh:
                started = time.monotonic()
                await load(pool, args.entries, args.blocks_per_month)
                show(f"load: {time.monotonic() - started:.0f} s")
            else:
                show(f"reusing the database in {data_dir}")
            async with pool.connection() as conn:
                closed = await finance_repo.periods(conn)
            if not closed:
                await post(pool)
                await close_all(pool)
            await export_all(pool, args.month)
            await sizes(pool)
        finally:
            await db.close(pool)
            db.stop_embedded_postgres(data_dir)


async def sizes(pool: db.Pool) -> None:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid)) FILTER ("
            "   WHERE c.relname ~ '^finance_')),"
            " pg_size_pretty(sum(pg_total_relation_size(c.oid)) FILTER ("
            "   WHERE c.relname ~ '^ledger_entries_'))"
            " FROM pg_class c WHERE c.relkind = 'r'"
        )
        row = await cursor.fetchone()
        assert row is not None
        show(f"sizes: finance tables {row[0]}, ledger_entries {row[1]}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.finance", description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--blocks-per-month", type=int, default=1000)
    parser.add_argument("--month", type=int, default=6, help="the month whose reports export")
    parser.add_argument("--data-dir", help="keep the database here (reused when it exists)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
