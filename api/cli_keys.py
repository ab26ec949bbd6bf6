"""`credit-ledger keys create|list|revoke`: API keys from the command line.

The first admin key comes from here (issue 4): nothing on the wire can create a key without one.
`keys create` prints the new key, and only the key, on stdout, so a script can capture it
(`KEY=$(credit-ledger keys create --name ops --scope admin)`); the human line goes to stderr.
The key is never shown again.

Each command reads the database from the environment once (`DATABASE_URL`, or the embedded
Postgres under `CREDIT_LEDGER_DATA_DIR`), applies pending migrations, runs in one transaction,
and records what it changed in the audit log in that same transaction. Operating errors (an
unknown customer or key, an unreachable database) exit non-zero with a message on stderr.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

import click
import psycopg
from psycopg_pool import PoolTimeout

from api.common import parse_id
from grants.errors import InvalidRequest
from ledger import db
from ledger.migrate import migrate
from ledger.repositories import api_keys, audit, customers
from ledger.settings import SettingsError

T = TypeVar("T")

AUDIT_ACTOR: Final = "cli"
# A command needs one connection, and gives up on an unreachable server after this long.
CONNECT_TIMEOUT_S: Final = 10.0
# Keys listed per round trip; the listing pages through all of them.
LIST_PAGE_ROWS: Final = 500
_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%SZ"
_LIST_HEADER: Final = ("id", "name", "prefix", "scopes", "customer", "created", "revoked")


def _parse_id(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """An object id on the command line is spelled as on the wire (api.common.parse_id)."""
    if value is None:
        return None
    try:
        return parse_id(value, param.name or "id")
    except InvalidRequest as error:
        raise click.BadParameter(error.message, ctx, param) from None


def _check_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("must not be empty", ctx, param)
    if len(value) > api_keys.NAME_CHARS_MAX:
        raise click.BadParameter(f"is longer than {api_keys.NAME_CHARS_MAX} characters", ctx, param)
    return value


def _run(work: Callable[[db.Connection], Awaitable[T]]) -> T:
    """Run `work` in one transaction on the configured database, migrated first."""
    try:
        settings = dataclasses.replace(
            db.DatabaseSettings.from_env(),
            pool_min_size=1,
            pool_max_size=1,
            connect_timeout_s=CONNECT_TIMEOUT_S,
        )
    except SettingsError as error:
        raise click.ClickException(str(error)) from error
    try:
        return asyncio.run(_run_async(settings, work))
    finally:
        if settings.database_url is None:
            db.stop_embedded_postgres(settings.embedded_data_dir)


async def _run_async(
    settings: db.DatabaseSettings, work: Callable[[db.Connection], Awaitable[T]]
) -> T:
    try:
        pool = await db.open_pool(settings)
    except (psycopg.OperationalError, PoolTimeout) as error:
        raise click.ClickException(f"cannot connect to Postgres: {error}") from error
    try:
        await migrate(pool)
        async with pool.connection() as conn, conn.transaction():
            return await work(conn)
    finally:
        await db.close(pool)


def _id_text(id: int) -> str:
    return str(uuid.UUID(int=id))


def _time_text(at: datetime | None) -> str:
    return "-" if at is None else at.strftime(_TIME_FORMAT)


def _describe(key: api_keys.ApiKey) -> str:
    bound = "" if key.customer_id is None else f", customer {_id_text(key.customer_id)}"
    scopes = ",".join(sorted(key.scopes))
    return f"API key {_id_text(key.id)} {key.name!r} ({key.prefix}..., scopes {scopes}{bound})"


async def create_key_audited(
    conn: db.Connection,
    *,
    name: str,
    scopes: Iterable[str],
    customer_id: int | None = None,
    actor: str = AUDIT_ACTOR,
) -> tuple[api_keys.ApiKey, str]:
    """A new key (its row, and the key itself), recorded in the audit log, in the caller's
    transaction. Raises `api_keys.ActiveKeyLimitReached`."""
    row, key = await api_keys.create_key(conn, name=name, scopes=scopes, customer_id=customer_id)
    customer_text = None if customer_id is None else _id_text(customer_id)
    details = {"scopes": sorted(row.scopes), "customer_id": customer_text}
    await _audit(conn, actor, "api_key.create", row, details)
    return row, key


async def revoke_key_audited(
    conn: db.Connection, key_id: int, *, actor: str = AUDIT_ACTOR
) -> tuple[api_keys.ApiKey, bool] | None:
    """Revokes a key, recorded in the audit log the first time, in the caller's transaction:
    its row and whether it was revoked now (not already); None when no key has the id."""
    before = await api_keys.get_key(conn, key_id)
    if before is None:
        return None
    row = await api_keys.revoke_key(conn, key_id)
    assert row is not None and row.revoked_at is not None
    if before.revoked_at is not None:
        return row, False
    await _audit(conn, actor, "api_key.revoke", row, {})
    return row, True


async def _audit(
    conn: db.Connection, actor: str, action: str, row: api_keys.ApiKey, details: dict[str, Any]
) -> None:
    """An audit entry about a key: its name and prefix, never the key."""
    await audit.append(
        conn,
        actor=actor,
        action=action,
        object_type="api_key",
        object_id=row.id,
        details={"name": row.name, "prefix": row.prefix, **details},
    )


@click.group(name="keys")
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command(name="create")
@click.option("--name", required=True, callback=_check_name, help="What the key is for.")
@click.option(
    "--scope",
    "scopes",
    type=click.Choice(sorted(api_keys.SCOPES)),
    multiple=True,
    required=True,
    help="A scope of the key; repeat for several.",
)
@click.option(
    "--customer", default=None, callback=_parse_id, help="Bind the key to this customer (id)."
)
def create(name: str, scopes: Sequence[str], customer: int | None) -> None:
    """Create a key and print it on stdout (once: it is stored hashed)."""

    async def work(conn: db.Connection) -> tuple[api_keys.ApiKey, str]:
        if customer is not None and await customers.get_customer(conn, customer) is None:
            raise click.ClickException(f"no customer has the id {_id_text(customer)}")
        try:
            return await create_key_audited(conn, name=name, scopes=scopes, customer_id=customer)
        except api_keys.ActiveKeyLimitReached as error:
            raise click.ClickException(f"{error}; revoke one first") from error

    row, key = _run(work)
    click.echo(key)
    click.echo(f"created {_describe(row)}; store the key now, it is not shown again", err=True)


@keys.command(name="list")
@click.option("--active", is_flag=True, help="Leave out revoked keys.")
def list_(active: bool) -> None:
    """List keys (their prefixes, never the keys)."""

    async def work(conn: db.Connection) -> list[api_keys.ApiKey]:
        found: list[api_keys.ApiKey] = []
        while True:
            page = await api_keys.list_keys(
                conn,
                include_revoked=not active,
                after_id=found[-1].id if found else None,
                limit=LIST_PAGE_ROWS,
            )
            found.extend(page)
            if len(page) < LIST_PAGE_ROWS:
                return found

    rows = sorted(_run(work), key=lambda key: (key.created_at, key.id))
    table = [_LIST_HEADER] + [
        (
            _id_text(key.id),
            key.name,
            key.prefix,
            ",".join(sorted(key.scopes)),
            "-" if key.customer_id is None else _id_text(key.customer_id),
            _time_text(key.created_at),
            _time_text(key.revoked_at),
        )
        for key in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(_LIST_HEADER))]
    for line in table:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


@keys.command(name="revoke")
@click.argument("key_id", metavar="ID", callback=_parse_id)
def revoke(key_id: int | None) -> None:
    """Revoke a key: every process refuses it once its cache has reloaded (within a moment)."""
    assert key_id is not None  # a required argument

    async def work(conn: db.Connection) -> tuple[api_keys.ApiKey, bool]:
        revoked = await revoke_key_audited(conn, key_id)
        if revoked is None:
            raise click.ClickException(f"no API key has the id {_id_text(key_id)}")
        return revoked

    row, revoked_now = _run(work)
    if revoked_now:
        click.echo(f"revoked {_describe(row)}")
    else:
        click.echo(f"{_describe(row)} was revoked already, at {_time_text(row.revoked_at)}")


if __name__ == "__main__":
    keys()
