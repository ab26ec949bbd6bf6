"""`credit-ledger keys` through click's runner, against a database of its own (DATABASE_URL):
create prints the key alone on stdout, list shows keys without them, revoke is idempotent, and
mistakes exit non-zero with a message. The commands run `asyncio.run` themselves, so these tests
are synchronous."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result

from api import cli_keys
from api.auth import KeyCache
from api.cli_keys import keys
from ledger import db
from ledger.repositories import api_keys, audit, customers

SETTINGS = db.DatabaseSettings(pool_min_size=1, pool_max_size=2)


@pytest.fixture
def database_url(fresh_db_url: Callable[..., str]) -> str:
    """A new, empty database: the commands migrate it themselves."""
    return fresh_db_url()


def _invoke(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(keys, list(args), env={"DATABASE_URL": database_url})


def _create(database_url: str, *args: str) -> str:
    result = _invoke(database_url, "create", *args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout.strip()


def _in_db(database_url: str, work: Callable[[db.Pool], object]) -> object:
    async def run() -> object:
        pool = await db.open_pool(SETTINGS, conninfo=database_url)
        try:
            result = work(pool)
            assert asyncio.iscoroutine(result)
            return await result
        finally:
            await db.close(pool)

    return asyncio.run(run())


def test_create_prints_only_the_key_on_stdout(database_url: str) -> None:
    result = _invoke(database_url, "create", "--name", "first admin", "--scope", "admin")
    assert result.exit_code == 0, (result.output, result.exception)
    assert re.fullmatch(r"clk_[A-Za-z0-9_-]{43}\n", result.stdout)
    key = result.stdout.strip()
    assert "first admin" in result.stderr and key[:12] in result.stderr
    assert key not in result.stderr  # shown once, where a script captures it

    async def check(pool: db.Pool) -> None:
        cache = KeyCache()
        await cache.load(pool)
        principal = cache.authenticate(f"Bearer {key}")
        assert principal.scopes == {"admin"} and principal.name == "first admin"
        async with pool.connection() as conn:
            entries = await audit.list_for_object(conn, "api_key", principal.key_id)
        assert [entry.action for entry in entries] == ["api_key.create"]
        assert key not in str(entries)

    _in_db(database_url, check)


def test_create_with_several_scopes_and_a_customer(database_url: str) -> None:
    customer_id = 2**127 + 5
    _create(database_url, "--name", "bootstrap", "--scope", "runtime")  # migrates the database

    async def add_customer(pool: db.Pool) -> None:
        async with pool.connection() as conn:
            await customers.insert_customer(conn, id=customer_id, tenant=77, name="Acme")

    _in_db(database_url, add_customer)
    customer_text = str(uuid.UUID(int=customer_id))
    key = _create(
        database_url,
        "--name", "agent",
        "--scope", "runtime",
        "--scope", "finance",
        "--customer", customer_text,
    )  # fmt: skip

    async def check(pool: db.Pool) -> None:
        cache = KeyCache()
        await cache.load(pool)
        principal = cache.authenticate(f"Bearer {key}")
        assert principal.scopes == {"runtime", "finance"}
        assert (principal.customer_id, principal.tenant) == (customer_id, 77)

    _in_db(database_url, check)
    listing = _invoke(database_url, "list")
    assert listing.exit_code == 0
    assert customer_text in listing.stdout and "finance,runtime" in listing.stdout


def test_list_shows_keys_and_revoke_revokes(database_url: str) -> None:
    key = _create(database_url, "--name", "ci runner", "--scope", "runtime")
    other = _create(database_url, "--name", "finance team", "--scope", "finance")

    listing = _invoke(database_url, "list")
    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["id", "name", "prefix", "scopes", "customer", "created", "revoked"]
    assert len(lines) == 3
    assert "ci runner" in lines[1] and key[:12] in lines[1] and "runtime" in lines[1]
    assert "finance team" in lines[2] and other[:12] in lines[2]
    assert key not in listing.stdout and other not in listing.stdout
    key_id = lines[1].split()[0]

    revoked = _invoke(database_url, "revoke", key_id)
    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in revoked.stdout and key_id in revoked.stdout
    again = _invoke(database_url, "revoke", key_id)
    assert again.exit_code == 0, again.output
    assert "revoked already" in again.stdout

    listing = _invoke(database_url, "list")
    row = next(line for line in listing.stdout.splitlines() if line.startswith(key_id))
    assert not row.endswith("-")  # the revoked column has a time
    active = _invoke(database_url, "list", "--active")
    assert key_id not in active.stdout and other[:12] in active.stdout

    async def check(pool: db.Pool) -> None:
        cache = KeyCache()
        await cache.load(pool)
        assert len(cache) == 1
        async with pool.connection() as conn:
            entries = await audit.list_for_object(conn, "api_key", uuid.UUID(key_id).int)
            stored = await api_keys.get_key(conn, uuid.UUID(key_id).int)
        # Revoking twice is recorded once (newest first).
        assert [entry.action for entry in entries] == ["api_key.revoke", "api_key.create"]
        assert stored is not None and stored.revoked_at is not None

    _in_db(database_url, check)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "--name", "x", "--scope", "root"], "'root' is not one of"),
        (["create", "--name", "x"], "Missing option '--scope'"),
        (["create", "--scope", "admin"], "Missing option '--name'"),
        (["create", "--name", " ", "--scope", "admin"], "must not be empty"),
        (["create", "--name", "x", "--scope", "admin", "--customer", "acme"], "is not an id"),
        (  # one spelling of ids, as on the wire
            [
                "create",
                "--name",
                "x",
                "--scope",
                "admin",
                "--customer",
                str(uuid.UUID(int=0xABC)).upper(),
            ],
            "is not an id",
        ),
        (
            ["create", "--name", "x", "--scope", "admin", "--customer", str(uuid.UUID(int=9))],
            "no customer has the id 00000000-0000-0000-0000-000000000009",
        ),
        (["revoke", str(uuid.UUID(int=9))], "no API key has the id"),
        (["revoke", "not-an-id"], "is not an id"),
    ],
)
def test_mistakes_exit_non_zero_with_a_message(
    database_url: str, args: list[str], message: str
) -> None:
    result = _invoke(database_url, *args)
    assert result.exit_code != 0
    assert message in result.stderr
    assert result.stdout == ""
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unreachable_database_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_keys, "CONNECT_TIMEOUT_S", 0.5)
    result = CliRunner().invoke(
        keys,
        ["list"],
        env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"},
    )
    assert result.exit_code == 1
    assert "cannot connect to Postgres" in result.stderr
