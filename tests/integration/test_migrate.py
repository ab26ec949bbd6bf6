"""Migrations: applied once, in order, each in a transaction, under an advisory lock, with
their checksums checked. Every test starts from an empty database of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from ledger import db
from ledger.migrate import MigrationError, load_migrations, migrate

pytestmark = pytest.mark.anyio


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


async def _tables(pool: db.Pool) -> set[str]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        return {str(row[0]) for row in await cursor.fetchall()}


async def test_the_packaged_migrations_apply_once(
    fresh_db_url: Callable[..., str], db_settings: db.DatabaseSettings
) -> None:
    pool = await db.open_pool(db_settings, conninfo=fresh_db_url())
    try:
        assert await migrate(pool) == [
            "0001_catalog",
            "0002_grant_expired_state",
            "0003_api_keys",
            "0004_reconcile_failures",
            "0005_list_indexes",
            "0006_price_history",
            "0007_wallet_changes",
            "0008_projection",
            "0009_finance",
            "0010_grant_refunds",
            "0011_events",
            "0012_plans",
            "0013_webhooks",
            "0014_alerts",
            "0015_rollover",
        ]
        assert await migrate(pool) == []
        tables = await _tables(pool)
        assert {
            "schema_migrations",
            "credit_types",
            "grants",
            "audit_log",
            "ledger_entries",
            "usage_rollups",
            "dimension_sets",
            "api_keys",
            "reconcile_failures",
            "webhook_endpoints",
            "webhook_deliveries",
            "webhook_attempts",
        } <= tables
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT version, name, checksum, applied_at FROM schema_migrations"
            )
            rows = await cursor.fetchall()
        packaged = load_migrations()
        assert [(r[0], r[1], r[2]) for r in rows] == [
            (m.version, m.name, m.checksum) for m in packaged
        ]
        assert [m.name for m in packaged] == [
            "catalog",
            "grant_expired_state",
            "api_keys",
            "reconcile_failures",
            "list_indexes",
            "price_history",
            "wallet_changes",
            "projection",
            "finance",
            "grant_refunds",
            "events",
            "plans",
            "webhooks",
            "alerts",
            "rollover",
        ]
        assert rows[0][3].tzinfo is not None
    finally:
        await db.close(pool)


async def test_the_migrations_ship_in_the_package() -> None:
    labels = [m.label for m in load_migrations()]
    assert labels[0] == "0001_catalog"
    assert [int(label[:4]) for label in labels] == sorted(int(label[:4]) for label in labels)


async def test_concurrent_migrations_apply_each_file_once(
    fresh_db_url: Callable[..., str], db_settings: db.DatabaseSettings, tmp_path: Path
) -> None:
    """Two pools migrate the same database at once: the advisory lock runs them one after the
    other, and the second finds nothing left (without the lock, the second CREATE fails)."""
    directory = _write(
        tmp_path / "m",
        {
            "0001_first.sql": "CREATE TABLE first (id int PRIMARY KEY); SELECT pg_sleep(0.3);",
            "0002_second.sql": "CREATE TABLE second (id int PRIMARY KEY);",
        },
    )
    migrations = load_migrations(directory)
    url = fresh_db_url()
    pools = [await db.open_pool(db_settings, conninfo=url) for _ in range(2)]
    try:
        results = await asyncio.gather(*(migrate(pool, migrations) for pool in pools))
        assert sorted(results) == [[], ["0001_first", "0002_second"]]
        assert {"first", "second"} <= await _tables(pools[0])
    finally:
        for pool in pools:
            await db.close(pool)


async def test_a_changed_migration_is_an_error(
    fresh_db_url: Callable[..., str], db_settings: db.DatabaseSettings, tmp_path: Path
) -> None:
    directory = _write(tmp_path / "m", {"0001_first.sql": "CREATE TABLE first (id int);"})
    pool = await db.open_pool(db_settings, conninfo=fresh_db_url())
    try:
        assert await migrate(pool, load_migrations(directory)) == ["0001_first"]
        _write(
            directory,
            {
                "0001_first.sql": "CREATE TABLE first (id bigint);",
                "0002_second.sql": "CREATE TABLE second (id int);",
            },
        )
        with pytest.raises(MigrationError, match=r"0001_first changed after it was applied"):
            await migrate(pool, load_migrations(directory))
        # Nothing after the changed file was applied either.
        assert "second" not in await _tables(pool)
    finally:
        await db.close(pool)


async def test_a_failing_migration_leaves_nothing_behind(
    fresh_db_url: Callable[..., str], db_settings: db.DatabaseSettings, tmp_path: Path
) -> None:
    directory = _write(
        tmp_path / "m",
        {
            "0001_good.sql": "CREATE TABLE good (id int);",
            "0002_bad.sql": "CREATE TABLE half (id int); SELECT no_such_function();",
        },
    )
    pool = await db.open_pool(db_settings, conninfo=fresh_db_url())
    try:
        with pytest.raises(psycopg.errors.UndefinedFunction):
            await migrate(pool, load_migrations(directory))
        # 0001 committed in its own transaction; 0002 rolled back whole, its table included.
        tables = await _tables(pool)
        assert "good" in tables and "half" not in tables
        _write(directory, {"0002_bad.sql": "CREATE TABLE half (id int);"})
        assert await migrate(pool, load_migrations(directory)) == ["0002_bad"]
    finally:
        await db.close(pool)


async def test_migration_files_are_named_and_numbered_uniquely(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(_write(tmp_path / "a", {"1_x.sql": ""}))
    with pytest.raises(MigrationError, match="share a version"):
        load_migrations(_write(tmp_path / "b", {"0001_x.sql": "", "0001_y.sql": ""}))
    ordered = load_migrations(
        _write(tmp_path / "c", {"0010_c.sql": "", "0002_b.sql": "", "README.md": ""})
    )
    assert [m.label for m in ordered] == ["0002_b", "0010_c"]


async def test_migrations_run_under_their_own_statement_timeout(
    fresh_db_url: Callable[..., str], db_settings: db.DatabaseSettings, tmp_path: Path
) -> None:
    slow = load_migrations(_write(tmp_path / "m", {"0001_slow.sql": "SELECT pg_sleep(0.5);"}))
    pool = await db.open_pool(db_settings, conninfo=fresh_db_url())
    try:
        with pytest.raises(psycopg.errors.QueryCanceled):
            await migrate(pool, slow, statement_timeout_ms=100)
        assert await migrate(pool, slow) == ["0001_slow"]  # the default bound is minutes
        # The connection goes back to the pool with the pool's own timeout.
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT current_setting('statement_timeout')")
            assert await cursor.fetchone() == (f"{db_settings.statement_timeout_ms // 1000}s",)
    finally:
        await db.close(pool)
