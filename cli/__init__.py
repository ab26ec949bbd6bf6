"""`credit-ledger`: the command line. The composition root of the processes: it may import
every layer (the edges `api` and `jobs` may not import each other; this package joins them).

    credit-ledger serve   [--data-dir DIR] [--host H] [--port P] [--no-jobs] [--test-clock[=START]]
    credit-ledger jobs    (the background jobs alone, beside `serve` on a real cluster)
    credit-ledger migrate
    credit-ledger keys create|list|revoke
    credit-ledger reconcile [--abandon-grant ID --reason TEXT]
    credit-ledger usage   --from FROM --to TO [--bucket B] [--group-by F,...] [--csv] ...
    credit-ledger export  REPORT --period YYYY-MM [--format csv|json] [--layout L] [--out FILE]
    credit-ledger period  list|close|lock [YYYY-MM]
    credit-ledger finance post
    credit-ledger demo    [--url URL] [--key KEY] [--data-dir DIR]

Defaults are embedded: TigerBeetle's state machine in-process (journal under
DATA_DIR/engine) and Postgres 16 started by the project (DATA_DIR/postgres). TB_ADDRESSES and
DATABASE_URL switch to a real cluster and a real Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from api.cli_keys import keys
from cli.finance import export, finance, period
from cli.projection import projection
from cli.reconcile import reconcile
from cli.usage import usage
from ledger import db
from ledger.children import child_env, python_command
from ledger.client import Ledger, open_ledger
from ledger.clock import (
    ClockMismatch,
    TestClock,
    ns_of_datetime,
    refuse_wall_clock_on,
    rfc3339_of_ns,
    wall_clock_ns,
)
from ledger.embedded.journal import DataDirectoryLocked, JournalCorrupt
from ledger.migrate import migrate as apply_migrations
from ledger.settings import FinanceSettings, LedgerSettings
from ledger.tasks import stop_tasks

DATA_DIR_DEFAULT = ".data"
# The exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 128 + signal.SIGINT


@dataclass
class Runtime:
    ledger: Ledger
    pool: db.Pool
    database: db.DatabaseSettings
    conninfo: str


def env_with_data_dir(data_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if data_dir is not None:
        env["CREDIT_LEDGER_DATA_DIR"] = str(data_dir)
    return env


@contextlib.asynccontextmanager
async def runtime(data_dir: Path | None, *, engine_process: bool = False) -> AsyncIterator[Runtime]:
    """The engine and the database of this process, migrated; closed on the way out. With
    `engine_process`, the embedded engine runs in a child process (as the server runs it)."""
    env = env_with_data_dir(data_dir)
    database = db.DatabaseSettings.from_env(env)
    conninfo = await db.resolve_conninfo(database)
    pool = await db.open_pool(database, conninfo=conninfo)
    ledger = None
    try:
        applied = await apply_migrations(pool)
        if applied:
            click.echo(f"applied migrations: {', '.join(applied)}", err=True)
        settings = dataclasses.replace(LedgerSettings.from_env(env), engine_process=engine_process)
        ledger = open_ledger(settings)
        yield Runtime(ledger, pool, database, conninfo)
    finally:
        if ledger is not None:
            await ledger.close()
        await db.close(pool)


class _Commands(click.Group):
    """The commands, where Ctrl-C ends a command as interrupted (exit status 130) without
    click's "Aborted!", and an engine that cannot start (its data directory owned by another
    process, its journal damaged) is a one-line error. A server stops on its own terms (it
    catches the signal, see `serve`); elsewhere the KeyboardInterrupt comes out of
    `asyncio.run`, which cancelled the command's coroutine first, so its cleanup has run."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)
        except (DataDirectoryLocked, JournalCorrupt) as error:
            # An engine that cannot start says why in one line, not in a traceback.
            raise click.ClickException(str(error)) from None


@click.group(cls=_Commands)
def main() -> None:
    """Exact, fast, auditable credits for AI products, on TigerBeetle."""


main.add_command(keys)
main.add_command(reconcile)
main.add_command(projection)
main.add_command(usage)
main.add_command(export)
main.add_command(period)
main.add_command(finance)


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the embedded engine and Postgres keep their data "
    "(default $CREDIT_LEDGER_DATA_DIR or .data).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--access-log/--no-access-log", default=False, show_default=True)
@click.option(
    "--engine-process/--engine-in-process",
    default=True,
    show_default=True,
    help="Run the embedded engine in a process of its own, beside the server (it then has a "
    "core to itself), or in the server's process. Without effect when TB_ADDRESSES is set.",
)
@click.option(
    "--jobs/--no-jobs",
    "with_jobs",
    default=True,
    show_default=True,
    help="Run the background jobs in this process too (the embedded engine allows "
    "one process only; on a real cluster a separate `jobs` process may run "
    "them, and one leader is elected).",
)
@click.option(
    "--projection/--no-projection",
    default=True,
    show_default=True,
    envvar="CREDIT_LEDGER_PROJECTION",
    help="Feed the projection of the ledger into Postgres from this process (one leader "
    "writes when several processes do). Off, entries and usage stop growing here until a "
    "process that feeds it runs (nothing is lost: the feed reads the engine).",
)
@click.option(
    "--test-clock",
    "test_clock_start",
    is_flag=False,
    flag_value="now",
    default=None,
    metavar="[START]",
    help="Run on a test clock (a sandbox; embedded engine only): frozen, it moves only when "
    "advanced (POST /v1/test-clock/advance), for the service and its engine alike. START, an "
    "RFC 3339 instant, is where it starts on a fresh data directory (default: now); a data "
    "directory keeps its clock's instant across restarts, and never goes back.",
)
def serve(
    data_dir: Path | None,
    host: str,
    port: int,
    access_log: bool,
    engine_process: bool,
    with_jobs: bool,
    projection: bool,
    test_clock_start: str | None,
) -> None:
    """Run the HTTP API (and the background jobs). Ctrl-C or SIGTERM stops it cleanly."""
    # The clock first: a sandbox that cannot run is told before anything starts.
    test_clock = _test_clock_or_exit(data_dir, test_clock_start)
    # The port next: a busy one is told before Postgres or the engine start.
    sock = _listen_or_exit(host, port)
    _use_uvloop()
    stopped_by = asyncio.run(
        _serve(sock, data_dir, access_log, engine_process, with_jobs, projection, test_clock)
    )
    if stopped_by == signal.SIGINT:
        sys.exit(EXIT_INTERRUPTED)


async def _serve(
    sock: socket.socket,
    data_dir: Path | None,
    access_log: bool,
    engine_process: bool,
    with_jobs: bool,
    projection: bool,
    test_clock: TestClock | None = None,
) -> int | None:
    """Serves until a signal stops the server, and returns that signal, once everything is
    closed (the server, then the engine, the pool and the embedded Postgres)."""
    from api.app import ApiSettings, create_app
    from api.server import HTTP_LIMITS, Server, configure
    from jobs.scheduler import Jobs, JobSettings
    from ledger.heap import HeapPolicy

    async with runtime(data_dir, engine_process=engine_process) as rt:
        beside = projection and _feed_beside(data_dir, engine_process)
        app = create_app(
            ApiSettings(
                database=rt.conninfo,
                heap=HeapPolicy(),
                projection=projection and not beside,
                finance=FinanceSettings.from_env(),
            ),
            ledger=rt.ledger,
            pool=rt.pool,
            test_clock=test_clock,
        )
        if beside:
            env = {**env_with_data_dir(data_dir), "DATABASE_URL": rt.conninfo}
            feeding = _Beside(env)
            app.on_startup.append(feeding.start)
            app.on_shutdown.append(feeding.stop)
        if with_jobs:
            services = app.state.services
            jobs = Jobs(
                services.control,
                JobSettings(),
                projection_check=services.projection_check,
                plans=services.plans,
            )
            app.on_startup.append(lambda: _start(jobs.run(rt.conninfo), app.state))
            # First: the jobs would otherwise lead on while the other hooks end.
            app.on_shutdown.insert(0, functools.partial(_stop_jobs, jobs, app.state))
        server = Server(
            configure(
                app,
                sock,
                limits=HTTP_LIMITS,
                access_log=access_log,
                log_level="info",
            )
        )
        host, port = sock.getsockname()[:2]
        if test_clock is not None:
            click.echo(
                f"credit-ledger: on a test clock, at {rfc3339_of_ns(test_clock())} "
                "(POST /v1/test-clock/advance moves it)",
                err=True,
            )
        click.echo(
            f"credit-ledger: engine {rt.ledger.engine_name}, listening on http://{host}:{port}"
            " (Ctrl-C stops it)",
            err=True,
        )
        await server.serve(sockets=[sock])
        return server.stopped_by


def _test_clock_or_exit(data_dir: Path | None, start: str | None) -> TestClock | None:
    """The sandbox's test clock (`--test-clock[=START]`), or None on the wall clock; exits with
    the reason when the clock and the data directory do not go together."""
    settings = LedgerSettings.from_env(env_with_data_dir(data_dir))
    try:
        if start is None:
            refuse_wall_clock_on(settings.data_dir)
            return None
        if settings.tb_addresses:
            raise click.ClickException(
                "--test-clock needs the embedded engine: a TigerBeetle cluster's clock "
                "(TB_ADDRESSES) cannot be moved"
            )
        return TestClock.start(settings.data_dir, _start_ns(start))
    except ClockMismatch as error:
        raise click.ClickException(str(error)) from None


def _start_ns(text: str) -> int:
    if text == "now":
        return wall_clock_ns()
    try:
        at = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise click.BadParameter(
            f"{text!r} is not an RFC 3339 instant with its offset (2025-01-01T00:00:00Z)",
            param_hint="--test-clock",
        )
    return ns_of_datetime(at)


def _feed_beside(data_dir: Path | None, engine_process: bool) -> bool:
    """Whether `serve` feeds the projection from a process of its own: on a cluster, or with
    the embedded engine in a process whose clients socket another process can reach."""
    from ledger.embedded.process import CLIENTS_SOCKET, CLIENTS_SOCKET_PATH_BYTES_MAX

    settings = LedgerSettings.from_env(env_with_data_dir(data_dir))
    if settings.tb_addresses:
        return True
    path = settings.data_dir / CLIENTS_SOCKET
    return engine_process and len(str(path).encode()) <= CLIENTS_SOCKET_PATH_BYTES_MAX


class _Beside:
    """`credit-ledger projection feed` beside the server, started again whenever it ends. It
    ends itself when the server does, however (its standard input closes)."""

    RESTART_S_MAX = 10.0
    HEALTHY_RUN_S = 60.0

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="projection")

    async def stop(self) -> None:
        # A plain cancel: `_run` then ends its child, which can take seconds (a cancellation
        # again would cut that short), and `_run` awaits nothing that can lose one.
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        delay_s = 0.5
        while True:
            child = await asyncio.create_subprocess_exec(
                *python_command("-m", "cli", "projection", "feed", "--until-stdin-closes"),
                stdin=asyncio.subprocess.PIPE,
                env=child_env(self.env),
                # Out of the terminal's process group: a Ctrl-C stops the server, which then
                # ends this process (a SIGINT during its imports would print a traceback).
                start_new_session=True,
            )
            started = time.monotonic()
            try:
                code = await child.wait()
            except asyncio.CancelledError:
                await _end(child)
                raise
            if time.monotonic() - started > self.HEALTHY_RUN_S:
                delay_s = 0.5  # it had been running well: a new failure starts over
            click.echo(
                f"credit-ledger: the projection feed exited (code {code}); "
                f"starting it again in {delay_s:.1f} s",
                err=True,
            )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, self.RESTART_S_MAX)


async def _end(child: asyncio.subprocess.Process) -> None:
    """Ends a helper process: its standard input closes, then SIGTERM, then SIGKILL."""
    if child.stdin is not None:
        child.stdin.close()
    for signal_to_send in (None, signal.SIGTERM, signal.SIGKILL):
        if signal_to_send is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal_to_send)
        try:
            await asyncio.wait_for(child.wait(), timeout=5)
            return
        except TimeoutError:
            continue


def _listen_or_exit(host: str, port: int) -> socket.socket:
    from api.server import PortInUse, listen

    try:
        return listen(host, port)
    except PortInUse as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error}") from None


def _start(coro: Any, state: Any) -> None:
    state.jobs_task = asyncio.get_running_loop().create_task(coro, name="jobs")


# What stopping the jobs may take beyond their ticks' `stop_wait_s` (leaving the leadership).
JOBS_STOP_SLACK_S = 3.0


async def _stop_jobs(jobs: Any, state: Any) -> None:
    """Stops the jobs and waits for them (a tick still running gets `stop_wait_s` to finish)
    before the pool and the ledger close under them; cancels them past that."""
    jobs.stop()
    task = getattr(state, "jobs_task", None)
    if task is None:
        return
    _, late = await asyncio.wait({task}, timeout=jobs.settings.stop_wait_s + JOBS_STOP_SLACK_S)
    if late:
        await stop_tasks(late)


@main.command(name="jobs")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def jobs_command(data_dir: Path | None) -> None:
    """Run the background jobs alone (expiry sweep, reconciliation), for a deployment on a real
    cluster where `serve` runs elsewhere; one leader is elected among such processes."""
    _use_uvloop()
    asyncio.run(_jobs(data_dir))


async def _jobs(data_dir: Path | None) -> None:
    from api.app import build_services
    from jobs.scheduler import Jobs, JobSettings

    async with runtime(data_dir) as rt:
        services = build_services(rt.ledger, rt.pool, FinanceSettings.from_env())
        await services.control.load()
        follower = asyncio.create_task(services.control.follow(rt.conninfo))
        click.echo(f"credit-ledger jobs: engine {rt.ledger.engine_name}", err=True)
        try:
            jobs = Jobs(
                services.control,
                JobSettings(),
                projection_check=services.projection_check,
                plans=services.plans,
            )
            await jobs.run(rt.conninfo)
        finally:
            await stop_tasks([follower])


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def migrate(data_dir: Path | None) -> None:
    """Apply the database migrations (serve does this too)."""

    async def run() -> None:
        async with runtime(data_dir):
            pass

    asyncio.run(run())
    click.echo("database is up to date", err=True)


@main.command()
@click.option(
    "--url",
    default=None,
    help="The service to tour. Default: the one at http://127.0.0.1:8080 if it runs, else one "
    "started in this process on the embedded defaults.",
)
@click.option(
    "--key",
    default=None,
    help="An admin+runtime API key for the service. Default: a key named demo-... created in "
    "the service's database (that of --data-dir, or DATABASE_URL) and revoked at the end.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The service's data directory (default $CREDIT_LEDGER_DATA_DIR or .data).",
)
def demo(url: str | None, key: str | None, data_dir: Path | None) -> None:
    """Create a customer, a team and an agent, grant paid and promotional credits, reserve and
    settle, hit the limit, and print balances and entries."""
    from cli.demo import run_demo

    _use_uvloop()
    asyncio.run(run_demo(url, key, data_dir))


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _sigterm_is_exit() -> None:
    """SIGTERM ends the process like Ctrl-C, so `finally` blocks and atexit handlers run (the
    embedded Postgres is released)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def run() -> Any:
    _sigterm_is_exit()
    return main()


if __name__ == "__main__":
    run()
