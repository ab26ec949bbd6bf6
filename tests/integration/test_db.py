"""Settings, the pool, and the embedded Postgres' lifetime across processes.

The embedded server is shared by every process that uses its data directory and stops when the
last one exits, including when an earlier one was killed without a chance to say goodbye.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import db
from ledger.settings import SettingsError

pytestmark = pytest.mark.anyio

START = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from ledger.db import start_embedded_postgres\n"
    "uri = start_embedded_postgres(Path(sys.argv[1]))\n"
    "assert start_embedded_postgres(Path(sys.argv[1])) == uri  # idempotent\n"
    "print(uri, flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)
PROCESS_WAIT_S = 60


def _server_running(data_dir: Path) -> bool:
    return (data_dir / "postmaster.pid").exists()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory for a server of the test's own; if the test fails and leaves that
    server running, it is stopped here (SIGTERM to the postmaster: a smart shutdown)."""
    data_dir = tmp_path / "postgres"
    yield data_dir
    if _server_running(data_dir):
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGTERM)


def test_settings_from_env() -> None:
    settings = db.DatabaseSettings.from_env(
        {
            "CREDIT_LEDGER_DATA_DIR": "/srv/ledger",
            "DATABASE_POOL_MIN_SIZE": "3",
            "DATABASE_POOL_MAX_SIZE": "7",
            "DATABASE_STATEMENT_TIMEOUT_MS": "1500",
        }
    )
    assert settings.database_url is None
    assert settings.embedded_data_dir == Path("/srv/ledger/postgres")
    assert (settings.pool_min_size, settings.pool_max_size) == (3, 7)
    assert settings.statement_timeout_ms == 1500
    default = db.DatabaseSettings.from_env({"DATABASE_URL": " postgresql://h/db "})
    assert default.database_url == "postgresql://h/db"
    assert default.embedded_data_dir == Path(".data/postgres")
    for bad in (
        {"DATABASE_POOL_MAX_SIZE": "many"},
        {"DATABASE_POOL_MIN_SIZE": "5", "DATABASE_POOL_MAX_SIZE": "4"},
        {"DATABASE_POOL_MAX_SIZE": "0"},
        {"DATABASE_STATEMENT_TIMEOUT_MS": "0"},
    ):
        with pytest.raises(SettingsError):
            db.DatabaseSettings.from_env(bad)


async def test_pool_sessions_run_in_utc_with_the_statement_timeout(
    migrated_db_url: str,
) -> None:
    settings = db.DatabaseSettings(pool_min_size=1, pool_max_size=2, statement_timeout_ms=1234)
    pool = await db.open_pool(settings, conninfo=migrated_db_url)
    try:
        assert (pool.min_size, pool.max_size) == (1, 2)
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT current_setting('TimeZone'), current_setting('statement_timeout'),"
                " current_setting('application_name'), now()"
            )
            row = await cursor.fetchone()
        assert row is not None
        assert row[:3] == ("UTC", "1234ms", "credit-ledger")
        assert row[3].utcoffset().total_seconds() == 0
    finally:
        await db.close(pool)
    assert pool.closed


@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="DATABASE_URL names the server")
def test_the_embedded_server_stops_when_its_last_process_exits(data_dir: Path) -> None:
    first = subprocess.run(
        [sys.executable, "-c", START, str(data_dir), "0"],
        capture_output=True,
        text=True,
        timeout=PROCESS_WAIT_S,
        check=True,
    )
    assert first.stdout.startswith("postgresql://")
    assert (data_dir / "PG_VERSION").exists()
    assert not _server_running(data_dir)


@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="DATABASE_URL names the server")
def test_a_killed_process_does_not_keep_the_server_alive(data_dir: Path) -> None:
    killed = subprocess.Popen(
        [sys.executable, "-c", START, str(data_dir), "600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert killed.stdout is not None
        uri = killed.stdout.readline().strip()
        assert uri.startswith("postgresql://")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(PROCESS_WAIT_S)
    # The killed process never stopped the server; the next user joins it...
    assert _server_running(data_dir)
    second = subprocess.run(
        [sys.executable, "-c", START, str(data_dir), "0"],
        capture_output=True,
        text=True,
        timeout=PROCESS_WAIT_S,
        check=True,
    )
    assert second.stdout.strip() == uri
    # ...and, being the last one alive, stops it on exit.
    assert not _server_running(data_dir)
