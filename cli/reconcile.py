"""`credit-ledger reconcile`: run a reconciliation pass now, and show and resolve what it cannot
finish; then compare the projection with the engine.

Reconciliation finishes the dual writes a crash interrupted (wallets/control.py). The service
runs it at start and its jobs every few minutes; an object it cannot finish is recorded in
Postgres (`reconcile_failures`), logged, counted in `/metrics`, and never stops the service.
This command shows those records.

Then it checks the projection against the engine (wallets/reconcile_projection.py; the jobs do
every ten minutes): the range of engine time after the last clean check, up to the projection's
watermark (several runs when it is long), every owned account's balance, the catalog against
the engine's accounts. It prints the differences by kind, a few of each.

With the embedded engine, a running `serve` holds the engine: the command then runs neither
and shows what the service recorded (its open failures, its last check of the projection).
It exits 1 while a failure is open or the last check of the projection was not clean.

    credit-ledger reconcile [--data-dir DIR]
    credit-ledger reconcile --abandon-grant GRANT_ID --reason TEXT

An abandoned grant is one that can never reach the ledger (bad data written before the API
checked it): it becomes 'abandoned', its key answers 409 from then on, and should an earlier
attempt have reached the ledger after all, the sweeps void what its account holds. The command
then runs the pass of the dual writes only, and exits 1 while a failure is left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

from grants.errors import CreditError
from ledger import db
from ledger.client import Ledger, open_ledger
from ledger.clock import rfc3339_of_ns
from ledger.embedded.journal import DataDirectoryLocked
from ledger.migrate import migrate as apply_migrations
from ledger.repositories import projection_checks, reconcile_failures
from ledger.repositories._rows import ROWS_PER_PAGE_MAX
from ledger.repositories.projection_checks import Check
from ledger.repositories.reconcile_failures import ReconcileFailure
from ledger.settings import LedgerSettings
from wallets.catalog import Catalog
from wallets.control import ControlPlane, ReconcileReport, abandon_grant
from wallets.reconcile_projection import CheckResult, ProjectionCheck
from wallets.service import CreditService

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Differences printed per kind (the record keeps PROJECTION_CHECK_EXAMPLES_MAX of each).
_EXAMPLES_SHOWN = 5


@click.command(name="reconcile")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--abandon-grant",
    "abandon",
    metavar="GRANT_ID",
    default=None,
    help="Give up on a pending grant that reconciliation cannot finish: it is never issued.",
)
@click.option("--reason", default=None, help="Why (required with --abandon-grant; audited).")
def reconcile(data_dir: Path | None, abandon: str | None, reason: str | None) -> None:
    """Finish interrupted dual writes now; list what cannot be finished; resolve it."""
    grant_id = None
    if abandon is not None:
        try:
            grant_id = uuid.UUID(abandon).int
        except ValueError:
            raise click.BadParameter(
                f"{abandon!r} is not an id", param_hint="--abandon-grant"
            ) from None
        if not (reason or "").strip():
            raise click.UsageError("--abandon-grant needs --reason")
    elif reason is not None:
        raise click.UsageError("--reason goes with --abandon-grant")
    clean = asyncio.run(_reconcile(data_dir, grant_id, reason or ""))
    if not clean:
        raise SystemExit(1)


async def _reconcile(data_dir: Path | None, grant_id: int | None, reason: str) -> bool:
    """Runs the command; whether everything is clean (no failure open, the projection's last
    check without differences)."""
    env = dict(os.environ)
    if data_dir is not None:
        env["CREDIT_LEDGER_DATA_DIR"] = str(data_dir)
    async with _database(env) as pool:
        if grant_id is not None:
            try:
                row = await abandon_grant(
                    pool, grant_id, actor=f"cli:{getpass.getuser()}", reason=reason
                )
            except CreditError as error:
                raise click.ClickException(error.message) from None
            click.echo(f"grant {uuid.UUID(int=row.id)} abandoned: it will never be issued")
        checked: CheckResult | None = None  # this command's check of the projection
        recorded: Check | None = None  # the service's last one, when it holds the engine
        engine_held = False
        async with _engine(env) as ledger:
            engine_held = ledger is None
            if ledger is not None:
                control = ControlPlane(pool, CreditService(ledger, Catalog()))
                await control.load()
                _print_report(await control.reconcile())
                if grant_id is None:
                    checked = await ProjectionCheck(ledger, pool).run_to_watermark()
        async with pool.connection() as conn:
            failures = await reconcile_failures.list_open(conn, limit=ROWS_PER_PAGE_MAX)
            if engine_held and grant_id is None:
                recorded = await projection_checks.last_check(conn)
    _print_failures(failures)
    projection_clean = True
    if checked is not None:
        _print_projection(checked)
        projection_clean = checked.clean
    elif engine_held and grant_id is None:
        _print_recorded_check(recorded)
        projection_clean = recorded is None or recorded.clean
    return not failures and projection_clean


@contextlib.asynccontextmanager
async def _database(env: dict[str, str]) -> AsyncIterator[db.Pool]:
    settings = db.DatabaseSettings.from_env(env)
    settings = dataclasses.replace(settings, pool_min_size=1, pool_max_size=2)
    pool = await db.open_pool(settings)
    try:
        await apply_migrations(pool)
        yield pool
    finally:
        await db.close(pool)
        if settings.database_url is None:
            db.stop_embedded_postgres(settings.embedded_data_dir)


@contextlib.asynccontextmanager
async def _engine(env: dict[str, str]) -> AsyncIterator[Ledger | None]:
    """The engine, or None when a running service holds the embedded one."""
    try:
        ledger = open_ledger(LedgerSettings.from_env(env))
    except DataDirectoryLocked:
        click.echo(
            "the engine is in use by a running `credit-ledger serve`, which reconciles at "
            "start and every few minutes: showing what it recorded",
            err=True,
        )
        yield None
        return
    try:
        yield ledger
    finally:
        await ledger.close()


def _print_report(report: ReconcileReport) -> None:
    click.echo(
        f"reconciliation: {report.credit_types} credit types and {report.wallets} wallets "
        f"ensured, {len(report.grants_finished)} pending grants finished, "
        f"{len(report.failed)} not finished"
    )
    if report.interrupted:
        click.echo(f"stopped early: {report.interrupted}")


def _print_failures(failures: list[ReconcileFailure]) -> None:
    if not failures:
        click.echo("nothing left unfinished")
        return
    click.echo(f"could not finish ({len(failures)}):")
    for f in failures:
        since = f.first_failed_at.strftime(_TIME_FORMAT)
        click.echo(f"  {f.kind} {f.object_id}: {f.attempts} attempts since {since}: {f.error}")
    if any(f.kind == "grant" for f in failures):
        click.echo(
            "a grant that can never be issued is resolved with:\n"
            '  credit-ledger reconcile --abandon-grant GRANT_ID --reason "..."'
        )


def _print_projection(result: CheckResult) -> None:
    click.echo(
        f"projection: {_span(result.from_ts, result.through_ts)} ({result.transfers} "
        f"transfers), {result.accounts} accounts at the watermark "
        f"{rfc3339_of_ns(result.watermark_ts)}: " + ("clean" if result.clean else "NOT clean")
    )
    _print_differences(result.counts, [{"kind": d.kind, **d.detail} for d in result.examples])


def _print_recorded_check(check: Check | None) -> None:
    if check is None:
        click.echo("projection: not checked yet")
        return
    ran = check.ran_at.strftime(_TIME_FORMAT)
    click.echo(
        f"projection: last checked by the service at {ran}, "
        f"{_span(check.from_ts, check.through_ts)}: " + ("clean" if check.clean else "NOT clean")
    )
    counts = {group["kind"]: int(group["count"]) for group in check.differences}
    examples = [
        {"kind": group["kind"], **example}
        for group in check.differences
        for example in group["examples"]
    ]
    _print_differences(counts, examples)


def _span(from_ts: int, through_ts: int) -> str:
    if through_ts < from_ts:
        return "no transfers since the last clean check"
    return f"engine time {rfc3339_of_ns(from_ts)} .. {rfc3339_of_ns(through_ts)}"


def _print_differences(counts: dict[str, int], examples: list[dict[str, Any]]) -> None:
    """Per kind: how many, and the first few, one line each."""
    for kind, count in counts.items():
        click.echo(f"  {kind}: {count}")
        shown = [e for e in examples if e["kind"] == kind][:_EXAMPLES_SHOWN]
        for example in shown:
            fields = {k: v for k, v in example.items() if k != "kind"}
            click.echo(f"    {json.dumps(fields, separators=(', ', ': '))}")
        if count > len(shown):
            click.echo(f"    ... and {count - len(shown)} more")
