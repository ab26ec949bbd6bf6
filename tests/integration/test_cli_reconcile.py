"""`credit-ledger reconcile` checks the projection against the engine: it exits 0 when clean,
1 with the differences printed when not, and, while a service holds the embedded engine, shows
the service's last check (exiting 1 when that one was not clean) without running one. The
command runs `asyncio.run` itself, so these tests are synchronous."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.reconcile import reconcile
from ledger import db
from ledger.clock import ManualClock
from ledger.embedded import EmbeddedEngine
from tests.conftest import SETTINGS
from tests.integration.projection_support import mixed_history, plane_on


@pytest.fixture
def database_url(fresh_db_url: Callable[..., str], template_db: str) -> str:
    return fresh_db_url(template_db)


def _invoke(database_url: str, data_dir: Path) -> Result:
    env = {"DATABASE_URL": database_url, "CREDIT_LEDGER_DATA_DIR": str(data_dir)}
    return CliRunner().invoke(reconcile, [], env=env)


def _sql(database_url: str, statement: str) -> None:
    async def run() -> None:
        pool = await db.open_pool(SETTINGS, conninfo=database_url)
        try:
            async with pool.connection() as conn:
                await conn.execute(statement)
        finally:
            await db.close(pool)

    asyncio.run(run())


def _history(database_url: str, data_dir: Path) -> None:
    """A mixed history on the engine of `data_dir`, projected; the engine closed after it."""

    async def run() -> None:
        pool = await db.open_pool(SETTINGS, conninfo=database_url)
        clock = ManualClock(start_ns=1_735_689_600 * 1_000_000_000)
        engine = EmbeddedEngine(data_dir / "engine", clock_ns=clock, fsync=False)
        try:
            plane = plane_on(pool, engine, clock)
            await mixed_history(plane, clock)
            await plane.service.ledger.close()
        finally:
            engine.close()
            await db.close(pool)

    asyncio.run(run())


def test_the_command_exits_non_zero_while_the_projection_differs(
    database_url: str, tmp_path: Path
) -> None:
    _history(database_url, tmp_path)
    ran = _invoke(database_url, tmp_path)
    assert ran.exit_code == 0, ran.output
    assert "nothing left unfinished" in ran.output
    assert "projection: engine time 1970-01-01T00:00:00.000000001Z .. 2025-01-01T" in ran.output
    assert ": clean" in ran.output

    _sql(database_url, "DELETE FROM ledger_entries WHERE kind = 'expire'")
    ran = _invoke(database_url, tmp_path)
    assert ran.exit_code == 1, ran.output
    assert "no transfers since the last clean check" in ran.output and "NOT clean" in ran.output
    assert "  balance: 1" in ran.output and '"account_code": "GRANT"' in ran.output

    # A service holds the engine: the command shows the service's last check, runs none.
    with EmbeddedEngine(tmp_path / "engine", fsync=False):
        ran = _invoke(database_url, tmp_path)
    assert ran.exit_code == 1, ran.output
    assert "the engine is in use" in ran.output
    assert "projection: last checked" in ran.output and "NOT clean" in ran.output
    assert "  balance: 1" in ran.output
