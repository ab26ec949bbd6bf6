"""`credit-ledger export`, `credit-ledger period` and `credit-ledger finance`: the finance
subledger from the command line, read from and written to Postgres directly (the engine is not
needed; works beside a running `serve`). finance/README.md describes the reports.

    credit-ledger export journal-lines --period 2025-01 --out jan.csv
        (writes jan.csv and jan.csv.control.json: rows, totals per currency, sha256)
    credit-ledger export summary-journal --period 2025-01 --layout netsuite --out je.csv
    credit-ledger export rollforward --period 2025-01 --format json
    credit-ledger period list
    credit-ledger period close 2025-01 [--actor NAME]
    credit-ledger period lock 2025-01 [--actor NAME]
    credit-ledger finance post

Closing a period runs its checks (finance/periods.py); the reconciliation of the engine against
the projection it relies on is the last one recorded (`credit-ledger reconcile`, or the jobs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import getpass
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, TypeVar

import click
import psycopg
from psycopg_pool import PoolTimeout

from api.common import parse_id
from cli.projection import engine_clock
from finance import exports, periods
from finance import reports as rp
from finance.exports import ExportRequest
from finance.posting import Poster
from grants.errors import CreditError
from ledger import db
from ledger.migrate import migrate
from ledger.settings import FinanceSettings, SettingsError

CONNECT_TIMEOUT_S: Final = 10.0
# Progress on stderr at most this often, and every this many rows.
PROGRESS_EVERY_S: Final = 1.0
PROGRESS_EVERY_ROWS: Final = 100_000
T = TypeVar("T")

_data_dir = click.option("--data-dir", type=click.Path(path_type=Path), default=None)


def _run(data_dir: Path | None, work: Callable[[db.Pool], Awaitable[T]]) -> T:
    """Runs `work` on a migrated pool of the configured database; errors in one line."""
    from cli import env_with_data_dir

    try:
        settings = dataclasses.replace(
            db.DatabaseSettings.from_env(env_with_data_dir(data_dir)),
            pool_min_size=1,
            pool_max_size=2,
            connect_timeout_s=CONNECT_TIMEOUT_S,
        )
    except SettingsError as error:
        raise click.ClickException(str(error)) from error

    async def main() -> T:
        try:
            pool = await db.open_pool(settings)
        except (psycopg.OperationalError, PoolTimeout) as error:
            raise click.ClickException(f"cannot connect to Postgres: {error}") from error
        try:
            await migrate(pool)
            return await work(pool)
        except CreditError as error:
            raise click.ClickException(f"{error.code}: {error.message}") from None
        finally:
            await db.close(pool)

    try:
        return asyncio.run(main())
    finally:
        if settings.database_url is None:
            db.stop_embedded_postgres(settings.embedded_data_dir)


def _finance_settings() -> FinanceSettings:
    try:
        return FinanceSettings.from_env()
    except SettingsError as error:
        raise click.ClickException(str(error)) from error


@click.command(name="export")
@click.argument("report", type=click.Choice([r.value for r in rp.Report]))
@click.option("--period", required=True, metavar="YYYY-MM", help="The month (UTC).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv")
@click.option(
    "--layout",
    type=click.Choice([x.value for x in rp.Layout]),
    default="generic",
    show_default=True,
    help="summary-journal only: the generic columns, or NetSuite's or QuickBooks Online's "
    "journal entry import.",
)
@click.option("--customer", default=None, metavar="ID", help="One customer's rows only.")
@click.option(
    "--accounts",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="JSON mapping of the chart to the ERP's accounts (default "
    f"${exports.ERP_ACCOUNTS_ENV}; none: the chart's codes).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write here (a CSV gets FILE.control.json beside it); default stdout.",
)
@_data_dir
def export(
    report: str,
    period: str,
    fmt: str,
    layout: str,
    customer: str | None,
    accounts: Path | None,
    out: Path | None,
    data_dir: Path | None,
) -> None:
    """Export a finance report of one period, as CSV (with its control) or JSON."""
    settings = _finance_settings()
    try:
        chosen = rp.parse_report(report)
        request = ExportRequest(
            report=chosen,
            period=rp.parse_period(period),
            layout=rp.parse_layout(layout, chosen),
            customer_id=None if customer is None else parse_id(customer, "customer_id"),
            functional_currency=settings.functional_currency,
            mapping=(
                exports.load_mapping(accounts)
                if accounts is not None
                else exports.mapping_from_env(os.environ)
            ),
        )
    except CreditError as error:
        hint = {"customer_id": "--customer", "mapping": "--accounts"}
        field = str(error.details.get("field", ""))
        raise click.BadParameter(
            error.message, param_hint=[hint.get(field, f"--{field}")]
        ) from None

    async def work(pool: db.Pool) -> exports.Control | None:
        if fmt == "json":
            data = await exports.export_json(pool, request)
            _write(out, data + b"\n")
            return None
        if out is None:
            return await exports.write_csv(pool, request, sys.stdout.buffer, _progress())
        partial = out.with_name(out.name + ".partial")
        with partial.open("wb") as f:
            control = await exports.write_csv(pool, request, f, _progress())
        partial.replace(out)
        out.with_name(out.name + exports.CONTROL_SUFFIX).write_bytes(exports.control_json(control))
        return control

    control = _run(data_dir, work)
    if control is not None:
        status = "provisional (the period is open)" if control.provisional else "final"
        where = "" if out is None else f" to {out} (control: {out}{exports.CONTROL_SUFFIX})"
        click.echo(f"{control.rows:,} rows{where}; {status}; sha256 {control.sha256}", err=True)
        if out is None:
            click.echo(exports.control_json(control).decode(), err=True, nl=False)


def _write(out: Path | None, data: bytes) -> None:
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        out.write_bytes(data)


def _progress() -> Callable[[int], None]:
    """Rows written so far, on stderr, every PROGRESS_EVERY_ROWS rows or PROGRESS_EVERY_S."""
    started = shown = time.monotonic()

    def progress(rows: int) -> None:
        nonlocal shown
        if rows % 1000 and rows % PROGRESS_EVERY_ROWS:
            return
        now = time.monotonic()
        if rows % PROGRESS_EVERY_ROWS == 0 or now - shown >= PROGRESS_EVERY_S:
            shown = now
            rate = rows / max(now - started, 1e-9)
            click.echo(f"  {rows:,} rows ({rate:,.0f} rows/s)", err=True)

    return progress


@click.group(name="period")
def period() -> None:
    """Accounting periods (calendar months, UTC): list, close, lock."""


def _actor(actor: str | None) -> str:
    return actor or f"cli:{getpass.getuser()}"


@period.command(name="list")
@_data_dir
def list_command(data_dir: Path | None) -> None:
    """The closed and locked months, and the open ones with journals."""
    views = _run(data_dir, periods.list_periods)
    for v in views:
        closed = "" if v.closed_at is None else f"  closed {rp.iso(v.closed_at)} by {v.closed_by}"
        locked = "" if v.locked_at is None else f"  locked {rp.iso(v.locked_at)} by {v.locked_by}"
        click.echo(f"{v.period}  {v.state:<6}{closed}{locked}".rstrip())


@period.command(name="close")
@click.argument("month", metavar="YYYY-MM")
@click.option("--actor", default=None, help="Who closes it (default cli:$USER).")
@_data_dir
def close_command(month: str, actor: str | None, data_dir: Path | None) -> None:
    """Close a month once its checks pass (the refusal names the check that failed)."""
    settings = _finance_settings()
    start = _period_arg(month)

    async def work(pool: db.Pool) -> periods.PeriodView:
        poster = Poster(pool, functional_currency=settings.functional_currency)
        return await periods.close_period(
            pool, start, actor=_actor(actor), clock_ns=engine_clock(data_dir), poster=poster
        )

    view = _run(data_dir, work)
    click.echo(f"{view.period} {view.state} at {rp.iso(view.closed_at)} by {view.closed_by}")


@period.command(name="lock")
@click.argument("month", metavar="YYYY-MM")
@click.option("--actor", default=None, help="Who locks it (default cli:$USER).")
@_data_dir
def lock_command(month: str, actor: str | None, data_dir: Path | None) -> None:
    """Lock a closed month."""
    start = _period_arg(month)

    async def work(pool: db.Pool) -> periods.PeriodView:
        return await periods.lock_period(
            pool, start, actor=_actor(actor), clock_ns=engine_clock(data_dir)
        )

    view = _run(data_dir, work)
    click.echo(f"{view.period} {view.state} at {rp.iso(view.locked_at)} by {view.locked_by}")


def _period_arg(month: str) -> dt.date:
    try:
        return rp.parse_period(month)
    except CreditError as error:
        raise click.BadParameter(error.message, param_hint=["YYYY-MM"]) from None


@click.group(name="finance")
def finance() -> None:
    """The finance subledger: post journals from the projection."""


@finance.command(name="post")
@_data_dir
def post(data_dir: Path | None) -> None:
    """Post journals for everything projected so far (the jobs do it every few seconds)."""
    settings = _finance_settings()

    async def work(pool: db.Pool) -> int:
        poster = Poster(pool, functional_currency=settings.functional_currency)
        total = 0
        started = shown = time.monotonic()
        while read := await poster.step():
            total += read
            now = time.monotonic()
            if now - shown >= PROGRESS_EVERY_S:
                shown = now
                click.echo(
                    f"  {total:,} entries posted ({total / (now - started):,.0f}/s)", err=True
                )
        return total

    total = _run(data_dir, work)
    click.echo(f"posted: {total:,} projected entries read; caught up")
