"""`credit-ledger projection`: where the projection of the ledger into Postgres stands, and a
rebuild of it from the engine.

    credit-ledger projection status  [--data-dir DIR]
    credit-ledger projection rebuild [--data-dir DIR] --yes
    credit-ledger projection feed    [--data-dir DIR]

`serve` feeds the projection from a process of its own (`projection feed`, which it starts
and restarts), so that the feed's work never runs under the requests' interpreter lock; with
the embedded engine that process reaches the engine through the server's clients socket. On a
real cluster, any number of `projection feed` processes may run: one leads at a time.

The projection (ledger/README.md, "The projection") is derived from the engine: a rebuild
empties its tables (entries, usage rollups, open pending legs; the dimension sets stay, they
are not derived) and replays every transfer from the first, writing the same rows as the live
feed did. It leads the projection while it runs, so it refuses to start while another process
feeds it; with the embedded engine, a running `serve` holds the engine and the command says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from ledger import db
from ledger.client import open_ledger_beside
from ledger.clock import business_clock, wall_clock_ns
from ledger.heap import HeapPolicy, manage_heap
from ledger.migrate import migrate as apply_migrations
from ledger.repositories import projection as repo
from ledger.settings import LedgerSettings
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
        feed = ProjectionFeed(rt.ledger, rt.pool, clock_ns=engine_clock(data_dir))
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


@projection.command(name="feed")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--until-stdin-closes",
    is_flag=True,
    help="Stop when standard input closes (how `serve` ends the feed it started, however it "
    "ends itself).",
)
def feed(data_dir: Path | None, until_stdin_closes: bool) -> None:
    """Feed the projection until stopped (SIGTERM). `serve` runs one beside itself."""
    # A Ctrl-C reaches the whole process group: the server stops first, then ends this one.
    if until_stdin_closes:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s - projection - %(message)s")
    asyncio.run(_feed(data_dir, until_stdin_closes))


async def _feed(data_dir: Path | None, until_stdin_closes: bool) -> None:
    from cli import env_with_data_dir

    env = env_with_data_dir(data_dir)
    database = db.DatabaseSettings.from_env(env)
    conninfo = await db.resolve_conninfo(database)
    pool = await db.open_pool(database, conninfo=conninfo)
    settings = LedgerSettings.from_env(env)
    ledger = open_ledger_beside(settings)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    watcher = asyncio.create_task(_stdin_closed()) if until_stdin_closes else None
    if watcher is not None:
        watcher.add_done_callback(lambda _: task.cancel())
    heap = asyncio.create_task(manage_heap(HeapPolicy()))  # (not CPython's: ledger/heap.py)
    try:
        # The engine's clock: a sandbox's test clock, which its ticks must see pass expiries.
        clock_ns = wall_clock_ns if settings.tb_addresses else business_clock(settings.data_dir)
        await ProjectionFeed(ledger, pool, clock_ns=clock_ns).run()
    except asyncio.CancelledError:
        pass
    finally:
        heap.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heap  # (its own `finally` gives the collector back as it was)
        if watcher is not None:
            watcher.cancel()
        await ledger.close()
        await db.close(pool)


async def _stdin_closed() -> None:
    """Returns when standard input reaches its end (the process that started this one ended)."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass


def engine_clock(data_dir: Path | None) -> Callable[[], int]:
    """The clock of the engine this process opens: a sandbox's test clock, or the wall clock."""
    from cli import env_with_data_dir

    settings = LedgerSettings.from_env(env_with_data_dir(data_dir))
    return wall_clock_ns if settings.tb_addresses else business_clock(settings.data_dir)
