"""`credit-ledger projection`: where the projection of the ledger into Postgres stands, and a
rebuild of it from the engine.

    credit-ledger projection status  [--data-dir DIR]
    credit-ledger projection rebuild [--data-dir DIR] --yes

The projection (ledger/README.md, "The projection") is derived from the engine: a rebuild
empties its tables (entries, usage rollups, open pending legs; the dimension sets stay, they
are not derived) and replays every transfer from the first, writing the same rows as the live
feed did. It leads the projection while it runs, so it refuses to start while another process
feeds it; with the embedded engine, a running `serve` holds the engine and the command says so.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from ledger import db
from ledger.migrate import migrate as apply_migrations
from ledger.repositories import projection as repo
from wallets.projection import LeaderBusy, ProjectionFeed

PROGRESS_EVERY_S = 1.0


@click.group(name="projection")
def projection() -> None:
    """The projection of the ledger into Postgres: status, rebuild."""


@projection.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def status(data_dir: Path | None) -> None:
    """Where the projection stands (Postgres only: works while the service runs)."""
    state = asyncio.run(_status(data_dir))
    click.echo(f"watermark:  {state.watermark_ts} (engine timestamp, ns)")
    click.echo(f"entries:    {state.entries:,}")
    click.echo(f"updated at: {state.updated_at.isoformat()}")


async def _status(data_dir: Path | None) -> repo.State:
    from cli import env_with_data_dir

    database = db.DatabaseSettings.from_env(env_with_data_dir(data_dir))
    conninfo = await db.resolve_conninfo(database)
    pool = await db.open_pool(database, conninfo=conninfo)
    try:
        await apply_migrations(pool)
        async with pool.connection() as conn:
            return await repo.read_state(conn)
    finally:
        await db.close(pool)


@projection.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--yes", is_flag=True, help="Confirm: the projection's tables are emptied first.")
def rebuild(data_dir: Path | None, yes: bool) -> None:
    """Empty the projection and replay the engine's whole history into it."""
    if not yes:
        raise click.UsageError("a rebuild empties the projection first: confirm with --yes")
    transfers, entries, seconds = asyncio.run(_rebuild(data_dir))
    click.echo(
        f"rebuilt: {transfers:,} transfers read, {entries:,} entries written in {seconds:.1f} s"
    )


async def _rebuild(data_dir: Path | None) -> tuple[int, int, float]:
    from cli import runtime

    async with runtime(data_dir) as rt:
        feed = ProjectionFeed(rt.ledger, rt.pool)
        started = time.monotonic()
        shown = started
        try:
            async with feed.leadership(wait=False):
                async with rt.pool.connection() as conn:
                    await repo.reset(conn)

                def progress(read: int, written: int) -> None:
                    nonlocal shown
                    now = time.monotonic()
                    if now - shown >= PROGRESS_EVERY_S:
                        shown = now
                        rate = read / (now - started)
                        click.echo(
                            f"  {read:,} transfers, {written:,} entries ({rate:,.0f} transfers/s)",
                            err=True,
                        )

                read = await feed.catch_up(progress=progress)
        except LeaderBusy:
            raise click.ClickException(
                "another process feeds the projection (a running service): stop it first"
            ) from None
        return read, feed.entries_written, time.monotonic() - started
