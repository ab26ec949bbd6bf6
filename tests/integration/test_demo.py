"""`credit-ledger demo` when nothing answers at its default URL: it starts a service in this
process (the embedded engine in a temporary data directory, the test's Postgres through
DATABASE_URL), tours it, says what it did, and revokes the key it created. (Beside a running
`serve`, the demo is tested end to end in tests/api/test_e2e_serve.py.)"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Callable
from pathlib import Path

import click
import pytest

from ledger import db
from ledger.repositories import api_keys

pytestmark = pytest.mark.anyio

# The module, not the `demo` command that the `cli` package names the same.
demo = importlib.import_module("cli.demo")
SETTINGS = db.DatabaseSettings(pool_min_size=1, pool_max_size=1)


def _unused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_with_nothing_running_the_demo_starts_its_own_service(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fresh_db_url: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    nowhere = _unused_url()
    monkeypatch.setattr(demo, "URL_DEFAULT", nowhere)
    database_url = fresh_db_url()
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("TB_ADDRESSES", raising=False)

    await demo.run_demo(None, None, tmp_path)

    out = capsys.readouterr()
    assert f"nothing answers at {nowhere}" in out.err
    assert "starting a service in this process at http://127.0.0.1:" in out.err
    assert "in the database of DATABASE_URL" in out.err
    assert "402 insufficient_credits (available 50, needed 100)" in out.out
    assert (tmp_path / "engine").is_dir()
    pool = await db.open_pool(SETTINGS, conninfo=database_url)
    try:
        async with pool.connection() as conn:
            keys = await api_keys.list_keys(conn, include_revoked=True)
    finally:
        await db.close(pool)
    assert [key.name.startswith("demo-") for key in keys] == [True]
    assert keys[0].revoked_at is not None


async def test_nothing_at_an_explicit_url_is_an_error() -> None:
    nowhere = _unused_url()
    with pytest.raises(click.ClickException, match=f"nothing answers at {nowhere}"):
        await demo.run_demo(nowhere, None, None)
