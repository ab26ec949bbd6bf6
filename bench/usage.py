"""Cost attribution benchmark: typical `GET /v1/usage` queries over a projection of 10 million
entries, through the repository function the API and the CLI use
(`ledger.repositories.usage.usage_page`). Not a test: it prints latencies and sizes.

    python -m bench.usage                       # 10,000,000 entries
    python -m bench.usage --entries 200000 --runs 50
    python -m bench.usage --data-dir /tmp/usage-10m   # keep the database, and reuse it later

It starts a fresh embedded Postgres in a temporary directory, migrates it, and fills it:
- a catalog: 2,000 customers, each a subscription with 3 teams of 3 agents; each agent a soft
  wallet with a paid block (USD, 1 to 3 cents a credit) and a promotional one; 2,048 dimension
  sets (8 features x 4 models x 64 users);
- `--entries` ledger entries over 92 days from 2026-09-01, generated with generate_series:
  customers drawn with a heavy skew (the largest has about 8% of the entries, the median one
  0.03%), agents, features (chat most), models and users at random; 80% debits, 10% settles,
  3% overdraft draws, 1% refunds and 6% reservations (which consume nothing);
- the entries go in a batch per hour of business time (one transaction each), and each batch
  adds to the hour and day rollups what the feed would add: the aggregation of
  `wallets.entries.rollups` and the upsert of `ledger.repositories.projection.add_rollups`,
  written in SQL here (the feed computes the same sums in Python). The table is vacuumed and
  analyzed once loaded, as autovacuum would leave it.

Then each query runs `--runs` times (or for at most `--seconds` when it is slow), and the
script prints p50 and p99, the rows of the first page (the API's largest page, 1,000 rows),
and the sizes of the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger import db
from ledger.migrate import migrate
from ledger.repositories import projection
from ledger.repositories.usage import UsageSelection, usage_page

CUSTOMERS = 2000
TEAMS = 3
AGENTS_PER_TEAM = 3
AGENTS = TEAMS * AGENTS_PER_TEAM
DAYS = 92
START = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
PAGE_ROWS = 1000

CATALOG = [
    "INSERT INTO credit_types (id, code, name, asset_scale) VALUES (1, 'credits', 'Credits', 0)",
    """INSERT INTO customers (id, tenant, name)
       SELECT md5('c' || c)::uuid, c + 1, 'customer ' || c FROM generate_series(0, %(c)s - 1) c""",
    """INSERT INTO resources (id, customer_id, kind)
       SELECT md5('s' || c)::uuid, md5('c' || c)::uuid, 'subscription'
       FROM generate_series(0, %(c)s - 1) c""",
    """INSERT INTO resources (id, customer_id, kind, parent_id)
       SELECT md5('t' || c || '-' || t)::uuid, md5('c' || c)::uuid, 'team', md5('s' || c)::uuid
       FROM generate_series(0, %(c)s - 1) c, generate_series(0, %(teams)s - 1) t""",
    """INSERT INTO resources (id, customer_id, kind, parent_id)
       SELECT md5('a' || c || '-' || a)::uuid, md5('c' || c)::uuid, 'agent',
              md5('t' || c || '-' || a / %(per_team)s)::uuid
       FROM generate_series(0, %(c)s - 1) c, generate_series(0, %(agents)s - 1) a""",
    """INSERT INTO wallets (id, resource_id, credit_type_id, overdraft_mode, overdraft_limit,
                           overdraft_account_id)
       SELECT md5('w' || c || '-' || a)::uuid, md5('a' || c || '-' || a)::uuid, 1, 'soft',
              1000000, md5('o' || c || '-' || a)::uuid
       FROM generate_series(0, %(c)s - 1) c, generate_series(0, %(agents)s - 1) a""",
    """INSERT INTO grants (id, wallet_id, credit_type_id, amount, category, consideration_minor,
                          currency, effective_at, source, actor, state)
       SELECT md5('gp' || c || '-' || a)::uuid, md5('w' || c || '-' || a)::uuid, 1, 1000000000,
              'paid', 1000000000::bigint * (1 + mod(c, 3)), 'USD', '2026-01-01', 'purchase',
              'bench', 'active'
       FROM generate_series(0, %(c)s - 1) c, generate_series(0, %(agents)s - 1) a""",
    """INSERT INTO grants (id, wallet_id, credit_type_id, amount, category, effective_at, source,
                          actor, state)
       SELECT md5('gq' || c || '-' || a)::uuid, md5('w' || c || '-' || a)::uuid, 1, 1000000000,
              'promotional', '2026-01-01', 'admin', 'bench', 'active'
       FROM generate_series(0, %(c)s - 1) c, generate_series(0, %(agents)s - 1) a""",
    """INSERT INTO dimension_sets (id, dimensions)
       SELECT md5('d' || f || '-' || m || '-' || u)::uuid,
              jsonb_build_object(
                'feature', (ARRAY['chat', 'search', 'summarize', 'embed', 'code', 'vision',
                                  'voice', 'agent'])[f + 1],
                'model', (ARRAY['small', 'medium', 'large', 'reasoning'])[m + 1])
              || CASE WHEN u < 0 THEN '{}'::jsonb
                      ELSE jsonb_build_object('user', 'user-' || u) END
       FROM generate_series(0, 7) f, generate_series(0, 3) m,
            generate_series(-1, %(users)s - 1) u""",
]

# A batch's entries, as the feed would write them (the catalog's resource, customer, currency
# and value at the block's cost basis joined in): i in [lo, hi], spread evenly over DAYS.
STAGING = """
CREATE TEMP TABLE IF NOT EXISTS batch_in (LIKE ledger_entries) ON COMMIT DELETE ROWS
"""
ENTRIES = f"""
INSERT INTO batch_in
SELECT md5('e' || i)::uuid, kind,
       timestamptz 'epoch' + (%(start_us)s::bigint + i * %(step_us)s::bigint) * interval '1 us',
       %(start_ns)s::bigint + i * %(step_ns)s::bigint, code, 1,
       CASE WHEN kind = 'overdraft_draw' THEN md5('o' || w)::uuid
            WHEN promo THEN md5('gq' || w)::uuid ELSE md5('gp' || w)::uuid END,
       CASE WHEN kind = 'overdraft_draw' THEN 'overdraft' ELSE 'block' END,
       md5('w' || w)::uuid, md5('a' || w)::uuid, md5('c' || c)::uuid, md5('op' || i)::uuid, NULL,
       amount, CASE WHEN kind = 'reserve' THEN n ELSE 0 END,
       md5('d' || f || '-' || m || '-' || u)::uuid,
       CASE WHEN paid THEN 'USD' END,
       CASE WHEN paid THEN amount * (1 + mod(c, 3)) ELSE 0 END
FROM (
    SELECT *, NOT promo AND kind <> 'overdraft_draw' AS paid,
           CASE WHEN kind = 'refund' THEN n WHEN kind = 'reserve' THEN 0 ELSE -n END AS amount
    FROM (
        SELECT i, c, c || '-' || a AS w, promo, n, f, m, u,
               CASE WHEN k < 0.80 THEN 'debit' WHEN k < 0.90 THEN 'settle'
                    WHEN k < 0.93 THEN 'overdraft_draw' WHEN k < 0.94 THEN 'refund'
                    ELSE 'reserve' END AS kind,
               CASE WHEN k < 0.80 THEN 5 WHEN k < 0.90 THEN 6 WHEN k < 0.93 THEN 13
                    WHEN k < 0.94 THEN 10 ELSE 4 END AS code
        FROM (
            SELECT i, c, promo, f, m, a,
                   CASE WHEN %(users)s = 0 THEN -1 ELSE u END AS u,
                   1 + floor(1000 * random())::int AS n, random() AS k
            FROM (
                SELECT i, c, u,
                       CASE WHEN %(spread)s THEN floor({AGENTS} * random())::int
                            ELSE mod(u * 7 + c, {AGENTS}) END AS a,
                       CASE WHEN %(spread)s THEN random() < 0.3
                            ELSE mod(day + c, 10) < 3 END AS promo,
                       CASE WHEN NOT %(spread)s AND random() < 0.8 THEN mod(u + c, 8)
                            ELSE floor(8 * random() ^ 2)::int END AS f,
                       CASE WHEN NOT %(spread)s AND random() < 0.8 THEN mod(u * 3 + c, 4)
                            ELSE floor(4 * random())::int END AS m
                FROM (
                    SELECT i, floor(%(customers)s * random() ^ 3)::int AS c,
                           floor(greatest(%(users)s, 1) * random() ^ %(user_skew)s)::int AS u,
                           i * %(step_us)s::bigint / 86400000000 AS day
                    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) i
                ) r
            ) q
        ) p
    ) s
) g
"""
# What a batch adds to the rollups: `wallets.entries.rollups` (consumption kinds, never budget
# accounts, an hour's and a day's bucket, credits and value negated, entries counted) and the
# upsert of `ledger.repositories.projection.add_rollups`, in SQL.
ROLLUPS = """
INSERT INTO usage_rollups AS u (
    customer_id, grain, bucket_start, resource_id, wallet_id, credit_type_id,
    dimension_set_id, currency, credits, value_minor, entries)
SELECT e.customer_id, g.grain, date_trunc(g.grain, e.effective_at, 'UTC'), e.resource_id,
       e.wallet_id, e.credit_type_id,
       COALESCE(e.dimension_set_id, '00000000-0000-0000-0000-000000000000'),
       COALESCE(e.currency, ''), -sum(e.amount), -sum(e.value_minor), count(*)
FROM batch_in e CROSS JOIN (VALUES ('hour'), ('day')) AS g (grain)
WHERE e.kind IN ('debit', 'settle', 'overdraft_draw', 'refund') AND e.account_kind <> 'budget'
  AND e.customer_id IS NOT NULL AND e.resource_id IS NOT NULL AND e.wallet_id IS NOT NULL
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
ON CONFLICT (customer_id, grain, bucket_start, resource_id, wallet_id, credit_type_id,
             dimension_set_id, currency)
DO UPDATE SET credits = u.credits + excluded.credits,
              value_minor = u.value_minor + excluded.value_minor,
              entries = u.entries + excluded.entries
"""


async def load(pool: db.Pool, entries: int, users: int, spread: bool) -> None:
    started_s = time.monotonic()
    async with pool.connection() as conn, conn.transaction():
        params = {
            "c": CUSTOMERS,
            "teams": TEAMS,
            "agents": AGENTS,
            "per_team": AGENTS_PER_TEAM,
            "users": users,
        }
        for statement in CATALOG:
            await conn.execute(statement, params)  # type: ignore[arg-type]
        months = {f"2026-{m:02d}" for m in range(9, 13)}
        await projection._ensure_partitions(conn, months)
    print(f"catalog: {CUSTOMERS:,} customers, {CUSTOMERS * AGENTS:,} wallets", flush=True)
    span_us = DAYS * 86_400_000_000
    start_us = int(START.timestamp()) * 1_000_000
    common = {
        "start_us": start_us,
        "step_us": span_us // entries,
        "start_ns": start_us * 1000,
        "step_ns": span_us * 1000 // entries,
        "customers": CUSTOMERS,
        "users": users,
        "spread": spread,
        "user_skew": 1 if spread else 2,
    }
    batch = max(1000, entries // (DAYS * 24))  # about an hour of entries
    async with pool.connection() as conn:
        await conn.set_autocommit(True)  # each batch a transaction of its own
        await conn.execute("SELECT setseed(0.42)")
        for lo in range(0, entries, batch):
            hi = min(lo + batch, entries) - 1
            await _batch(conn, {**common, "lo": lo, "hi": hi})
            if (hi + 1) % (batch * 48) < batch or hi + 1 == entries:
                rate = (hi + 1) / (time.monotonic() - started_s)
                print(f"\r  {hi + 1:>12,} entries ({rate:,.0f}/s)", end="", flush=True)
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        await conn.execute("VACUUM ANALYZE")
    print(f"\nloaded in {time.monotonic() - started_s:.0f} s", flush=True)


async def _batch(conn: db.Connection, params: dict[str, Any]) -> None:
    """A batch of entries and the rollups they add to, in one transaction, as the feed writes
    one (its batches are smaller: at most 8,189 transfers)."""
    async with conn.transaction():
        await conn.execute(STAGING)
        await conn.execute(ENTRIES, params)  # type: ignore[arg-type]
        await conn.execute("INSERT INTO ledger_entries SELECT * FROM batch_in")
        await conn.execute(ROLLUPS)


async def ids(pool: db.Pool) -> dict[str, Any]:
    """The largest customer, the median one (by entries) and their resources."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT customer_id, sum(entries) FROM usage_rollups WHERE grain = 'day'"
            " GROUP BY 1 ORDER BY 2 DESC"
        )
        ranked = [row[0] for row in await cursor.fetchall()]
        largest, median = ranked[0], ranked[len(ranked) // 2]
        cursor = await conn.execute(
            "SELECT kind, id, parent_id FROM resources WHERE customer_id = %s", (largest,)
        )
        tree = await cursor.fetchall()
    subscription = next(r[1] for r in tree if r[0] == "subscription")
    team = next(r[1] for r in tree if r[0] == "team")
    agent = next(r[1] for r in tree if r[0] == "agent" and r[2] == team)
    return {
        "largest": largest.int,
        "median": median.int,
        "subscription": subscription.int,
        "team": team.int,
        "agent": agent.int,
    }


def queries(ids: dict[str, Any]) -> list[tuple[str, UsageSelection]]:
    def at(day: str) -> dt.datetime:
        return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)

    month = {"from_at": at("2026-10-01"), "to_at": at("2026-11-01")}
    week = {"from_at": at("2026-10-12"), "to_at": at("2026-10-19")}
    by_day = {"grain": "day", "bucket": "day", "limit": PAGE_ROWS}
    by_hour = {"grain": "hour", "bucket": "hour", "limit": PAGE_ROWS}
    feature_model = ("feature", "model")
    return [
        ("month of the largest customer: day x feature x model",
         UsageSelection(**by_day, **month, customer_id=ids["largest"],
                        dimension_names=feature_model)),
        ("month of the median customer: day x feature x model",
         UsageSelection(**by_day, **month, customer_id=ids["median"],
                        dimension_names=feature_model)),
        ("week of the largest's subscription subtree: hour x resource",
         UsageSelection(**by_hour, **week, resource_id=ids["subscription"], by_resource=True)),
        ("week of one team subtree: hour x resource",
         UsageSelection(**by_hour, **week, resource_id=ids["team"], by_resource=True)),
        ("day of one agent, feature:chat: hour x model",
         UsageSelection(**by_hour, from_at=at("2026-10-14"), to_at=at("2026-10-15"),
                        resource_id=ids["agent"], dimension_names=("model",),
                        dimension_filters=(("feature", ("chat",)),))),
        ("92 days of the largest customer: month x model",
         UsageSelection(grain="day", bucket="month", from_at=at("2026-09-01"),
                        to_at=at("2026-12-02"), customer_id=ids["largest"],
                        dimension_names=("model",), limit=PAGE_ROWS)),
        ("month of every customer: month x customer",
         UsageSelection(grain="day", bucket="month", **month, by_customer=True,
                        limit=PAGE_ROWS)),
    ]  # fmt: skip


async def measure(
    pool: db.Pool, selection: UsageSelection, runs: int, seconds: float
) -> tuple[list[float], int]:
    """Latencies (s) of up to `runs` reads of the first page, within `seconds` (at least 20
    runs), after 3 warm-up runs; and the rows of the page."""
    latencies: list[float] = []
    rows = 0
    deadline = time.monotonic() + seconds
    for i in range(runs + 3):
        started = time.perf_counter()
        async with pool.connection() as conn:
            read = await usage_page(conn, selection)
        if i >= 3:
            latencies.append(time.perf_counter() - started)
        rows = len(read.records)
        if len(latencies) >= 20 and time.monotonic() > deadline:
            break
    return latencies, rows


def _ms(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


async def sizes(pool: db.Pool, show: Callable[[str], None]) -> None:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT sum(pg_total_relation_size(relid)), sum(pg_relation_size(relid))"
            " FROM pg_partition_tree('ledger_entries') WHERE isleaf"
        )
        total, heap = map(int, await cursor.fetchone() or (0, 0))
        cursor = await conn.execute(
            "SELECT pg_total_relation_size('usage_rollups'), pg_relation_size('usage_rollups')"
        )
        rollup_total, rollup_heap = map(int, await cursor.fetchone() or (0, 0))
        cursor = await conn.execute("SELECT grain, count(*) FROM usage_rollups GROUP BY 1")
        grains = dict(await cursor.fetchall())
        cursor = await conn.execute("SELECT count(*) FROM ledger_entries")
        (counted,) = await cursor.fetchone() or (0,)
    show(
        f"ledger_entries: {counted:,} rows, {total / 1e9:.2f} GB with indexes "
        f"({total / counted:.0f} bytes/entry; heap {heap / counted:.0f})"
    )
    show(
        f"usage_rollups: {grains.get('hour', 0):,} hour rows, {grains.get('day', 0):,} day rows, "
        f"{rollup_total / 1e9:.2f} GB with its key ({rollup_total / counted:.0f} bytes/entry; "
        f"heap {rollup_heap / 1e9:.2f} GB)"
    )
    show(
        f"100 million entries at this rate: {100e6 * (total + rollup_total) / counted / 1e9:.0f} GB"
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-usage-") as tmp:
        data_dir = (args.data_dir or Path(tmp)) / "postgres"
        conninfo = await asyncio.to_thread(db.start_embedded_postgres, data_dir)
        settings = db.DatabaseSettings(
            pool_min_size=1, pool_max_size=2, statement_timeout_ms=3_600_000
        )
        pool = await db.open_pool(settings, conninfo=conninfo)
        try:
            await migrate(pool)
            if await _loaded(pool):
                print(f"reusing the projection in {data_dir}", flush=True)
            else:
                await load(pool, args.entries, args.users, args.spread)
            await sizes(pool, print)
            await run_queries(pool, args.runs, args.seconds)
        finally:
            await db.close(pool)
            db.stop_embedded_postgres(data_dir)


async def _loaded(pool: db.Pool) -> bool:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT EXISTS (SELECT FROM usage_rollups)")
        row = await cursor.fetchone()
    return bool(row and row[0])


async def run_queries(pool: db.Pool, runs: int, seconds: float) -> None:
    named = await ids(pool)
    print(f"\n{'query':<62} {'rows':>5} {'runs':>5} {'p50 ms':>8} {'p99 ms':>8}")
    for name, selection in queries(named):
        latencies, rows = await measure(pool, selection, runs, seconds)
        print(
            f"{name:<62} {rows:>5} {len(latencies):>5} {_ms(latencies, 50):>8.2f} "
            f"{_ms(latencies, 99):>8.2f}",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=300, help="runs per query (at most)")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="time per query (at least 20 runs)"
    )
    parser.add_argument(
        "--users",
        type=int,
        default=32,
        help="users per customer, a dimension of every spend (0: spends carry only feature "
        "and model)",
    )
    parser.add_argument(
        "--spread",
        action="store_true",
        help="no correlation: every spend picks its agent, feature, model, user and block at "
        "random (the worst case for the rollups: about a row per entry)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the database here, and reuse the one loaded there by an earlier run",
    )
    asyncio.run(main(parser.parse_args()))
