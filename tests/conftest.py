"""Fixtures of the Postgres integration tests.

- `pg_url`: the server, once per session. `DATABASE_URL` when set (its role must be allowed to
  CREATE DATABASE); otherwise an embedded Postgres (pgserver) in a temporary directory, stopped
  when the session ends.
- `fresh_db_url()`: a new, empty database on that server, dropped when the session ends.
- `migrated_db_url`: one migrated database per test module, cloned from a template that is
  migrated once per session.
- `pool`: a small pool on the module's database, per test.
- `conn`: a connection inside a transaction that is rolled back after the test, so every test
  sees the module's database as it was (tests that need commits use `pool`).

Async tests run on asyncio through anyio's pytest plugin (`pytestmark = pytest.mark.anyio`).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ledger import db
from ledger.migrate import migrate

SETTINGS = db.DatabaseSettings(pool_min_size=1, pool_max_size=4, statement_timeout_ms=10_000)


@pytest.fixture(scope="session")
def db_settings() -> db.DatabaseSettings:
    return SETTINGS


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    # psycopg's async connections run on asyncio only.
    return "asyncio"


def with_dbname(url: str, dbname: str) -> str:
    return make_conninfo(url, dbname=dbname)


def _admin(url: str, statement: sql.Composed) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        yield url
        return
    data_dir: Path = tmp_path_factory.mktemp("pg") / "postgres"
    started_s = time.monotonic()
    url = db.start_embedded_postgres(data_dir)
    print(f"embedded Postgres in {data_dir}, up in {time.monotonic() - started_s:.2f} s")
    yield url
    db.stop_embedded_postgres(data_dir)


@pytest.fixture(scope="session")
def fresh_db_url(pg_url: str) -> Iterator[Callable[..., str]]:
    """A factory of new databases (empty, or copies of `template`), all dropped at the end."""
    created: list[str] = []

    def create(template: str | None = None) -> str:
        name = f"ledger_test_{uuid.uuid4().hex[:12]}"
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template or "template0")
        )
        _admin(pg_url, statement)
        created.append(name)
        return with_dbname(pg_url, name)

    yield create
    for name in created:
        _admin(
            pg_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def template_db(fresh_db_url: Callable[..., str]) -> str:
    """The name of a database migrated once per session, to clone for each module."""
    url = fresh_db_url()

    async def run() -> None:
        pool = await db.open_pool(SETTINGS, conninfo=url)
        try:
            await migrate(pool)
        finally:
            await db.close(pool)

    asyncio.run(run())
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


@pytest.fixture(scope="module")
def migrated_db_url(fresh_db_url: Callable[..., str], template_db: str) -> str:
    return fresh_db_url(template_db)


@pytest.fixture
async def pool(migrated_db_url: str) -> AsyncIterator[db.Pool]:
    pool = await db.open_pool(SETTINGS, conninfo=migrated_db_url)
    try:
        yield pool
    finally:
        await db.close(pool)


@pytest.fixture
async def conn(pool: db.Pool) -> AsyncIterator[db.Connection]:
    async with pool.connection() as conn, conn.transaction(force_rollback=True):
        yield conn
