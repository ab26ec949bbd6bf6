"""`credit-ledger usage`: cost attribution from the command line, read from Postgres directly
(the usage rollups of the projection), with the options and the rules of `GET /v1/usage`
(wallets/usage.py): credits consumed and their value, per time bucket and group, per credit
type and currency.

    credit-ledger usage --from 2026-03-01 --to 2026-04-01 --group-by resource,feature,model
    credit-ledger usage --from 2026-03-02T00:00:00Z --to 2026-03-03T00:00:00Z --bucket hour \\
        --resource SUBSCRIPTION_ID --dimension feature:chat --csv > usage.csv

A date alone is 00:00 UTC of that day; a time needs its UTC offset. Every page of the answer is
read (at most --rows-max rows) and shown sorted by bucket, then by the values grouped by, as an
aligned table or as the CSV of the API. The last line (on stderr with --csv) says how complete
the projection was: it includes every transfer up to its watermark. Works beside a running
`credit-ledger serve` (the embedded Postgres is shared; the engine is not needed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import click
import msgspec
import psycopg
from psycopg_pool import PoolTimeout

from api.common import parse_id
from cli.projection import engine_clock
from grants.errors import InvalidRequest
from ledger import db
from ledger.clock import rfc3339_of_ns
from ledger.ids import id_text
from ledger.migrate import migrate
from ledger.repositories import credit_types
from ledger.repositories.projection import State
from ledger.repositories.usage import UsageRecord
from ledger.settings import SettingsError
from wallets import usage as rules
from wallets.projection import lag_of

CONNECT_TIMEOUT_S: Final = 10.0
ROWS_MAX_DEFAULT: Final = 100_000
# Rows asked per round trip (the API's largest page).
PAGE_ROWS: Final = 1000
# Which option each field of the query is given by, for messages.
_OPTIONS: Final = {
    "from": "--from",
    "to": "--to",
    "bucket": "--bucket",
    "group_by": "--group-by",
    "dimension": "--dimension",
    "customer_id": "--customer",
    "resource_id": "--resource",
    "wallet_id": "--wallet",
    "credit_type": "--credit-type",
}
_NUMBER_COLUMNS: Final = frozenset({"credits", "value_minor", "entries"})


@dataclasses.dataclass(frozen=True)
class Options:
    start: str
    end: str
    bucket: str
    group_by: str | None
    customer: str | None
    resource: str | None
    wallet: str | None
    credit_type: str | None
    dimensions: tuple[str, ...]


@click.command(name="usage")
@click.option(
    "--from",
    "start",
    required=True,
    help="Start (inclusive): a date, or a time with its offset, on a whole UTC hour.",
)
@click.option("--to", "end", required=True, help="End (exclusive), likewise.")
@click.option(
    "--bucket",
    type=click.Choice([b.value for b in rules.Bucket]),
    default="day",
    show_default=True,
    help="Time buckets (UTC; a week starts on Monday).",
)
@click.option(
    "--group-by",
    default=None,
    help="Comma-separated: resource, wallet, customer, credit_type, and dimension names "
    "(dimension:NAME for one named like those).",
)
@click.option("--customer", default=None, metavar="ID")
@click.option("--resource", default=None, metavar="ID", help="The resource's whole subtree.")
@click.option("--wallet", default=None, metavar="ID")
@click.option("--credit-type", default=None, metavar="CODE")
@click.option(
    "--dimension",
    "dimensions",
    multiple=True,
    metavar="NAME:VALUE",
    help="Keep spends with this dimension value (repeatable).",
)
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (the API's columns).")
@click.option(
    "--rows-max",
    type=click.IntRange(1, 10_000_000),
    default=ROWS_MAX_DEFAULT,
    show_default=True,
    help="Stop after this many rows.",
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
def usage(
    start: str,
    end: str,
    bucket: str,
    group_by: str | None,
    customer: str | None,
    resource: str | None,
    wallet: str | None,
    credit_type: str | None,
    dimensions: tuple[str, ...],
    as_csv: bool,
    rows_max: int,
    data_dir: Path | None,
) -> None:
    """Credits consumed and their value, by time bucket and any grouping (from the projection)."""
    options = Options(
        start, end, bucket, group_by, customer, resource, wallet, credit_type, dimensions
    )
    env = dict(os.environ)
    if data_dir is not None:
        env["CREDIT_LEDGER_DATA_DIR"] = str(data_dir)
    try:
        settings = dataclasses.replace(
            db.DatabaseSettings.from_env(env),
            pool_min_size=1,
            pool_max_size=1,
            connect_timeout_s=CONNECT_TIMEOUT_S,
        )
    except SettingsError as error:
        raise click.ClickException(str(error)) from error
    # The lag is against the engine's clock: a sandbox's test clock, or the wall clock.
    clock_ns = engine_clock(data_dir)
    try:
        asyncio.run(_usage(settings, options, as_csv, rows_max, clock_ns))
    finally:
        if settings.database_url is None:
            db.stop_embedded_postgres(settings.embedded_data_dir)


async def _usage(
    settings: db.DatabaseSettings,
    options: Options,
    as_csv: bool,
    rows_max: int,
    clock_ns: Callable[[], int],
) -> None:
    try:
        pool = await db.open_pool(settings)
    except (psycopg.OperationalError, PoolTimeout) as error:
        raise click.ClickException(f"cannot connect to Postgres: {error}") from error
    try:
        await migrate(pool)
        async with pool.connection() as conn:
            codes = {t.id: t.code for t in await credit_types.list_credit_types(conn)}
        query = _query(options, codes)
        rows, complete, state = await _read(pool, query, rows_max)
    finally:
        await db.close(pool)
    _print(query, rows, codes, as_csv)
    _footer(len(rows), complete, state, as_csv, clock_ns())


def _query(options: Options, codes: dict[int, str]) -> rules.UsageQuery:
    """The options as a checked query; a mistake is a usage error naming its option."""
    try:
        ledgers = [ledger for ledger, code in codes.items() if code == options.credit_type]
        if options.credit_type is not None and not ledgers:
            raise InvalidRequest(f"no credit type {options.credit_type!r}", field="credit_type")
        return rules.usage_query(
            from_at=_time(options.start, "from"),
            to_at=_time(options.end, "to"),
            bucket=options.bucket,
            group_by=options.group_by,
            dimension=options.dimensions,
            customer_id=_id(options.customer, "customer_id"),
            resource_id=_id(options.resource, "resource_id"),
            wallet_id=_id(options.wallet, "wallet_id"),
            credit_type_id=ledgers[0] if ledgers else None,
            limit=PAGE_ROWS,
        )
    except InvalidRequest as error:
        field = str(error.details.get("field"))
        raise click.BadParameter(error.message, param_hint=[_OPTIONS.get(field, field)]) from None


def _time(text: str, field: str) -> dt.datetime:
    """A date (00:00 UTC of it) or an ISO 8601 time with its offset."""
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{text!r} is not a date or an ISO 8601 time", field=field) from None


def _id(text: str | None, field: str) -> int | None:
    return None if text is None else parse_id(text, field)


async def _read(
    pool: db.Pool, query: rules.UsageQuery, rows_max: int
) -> tuple[list[UsageRecord], bool, State]:
    """Every page up to `rows_max` rows: (rows, whether that is all, the projection's state
    as the last page was read)."""
    rows: list[UsageRecord] = []
    while True:
        page = await rules.read_usage(pool, query)
        rows += page.rows
        if page.next_position is None or len(rows) >= rows_max:
            complete = page.next_position is None and len(rows) <= rows_max
            return rows[:rows_max], complete, page.state
        query = msgspec.structs.replace(query, after=page.next_position)


def _print(
    query: rules.UsageQuery, rows: list[UsageRecord], codes: dict[int, str], as_csv: bool
) -> None:
    def code_of(ledger: int) -> str:
        return codes.get(ledger, str(ledger))

    ordered = sorted(rows, key=lambda r: _order(r, code_of))
    if as_csv:
        click.echo(rules.csv_text(ordered, query.group_by, code_of), nl=False)
        return
    columns = rules.csv_columns(query.group_by)
    cells = [rules.csv_row(r, query.group_by, code_of) for r in ordered]
    for line in table(columns, cells):
        click.echo(line)


def _order(row: UsageRecord, code_of: Callable[[int], str]) -> tuple[Any, ...]:
    grouped = (row.customer_id, row.resource_id, row.wallet_id)
    ids = [id_text(i) if i is not None else "" for i in grouped]
    values = [v or "" for v in row.dimensions]
    return (row.bucket_start, *ids, code_of(row.credit_type_id), *values, row.currency)


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """An aligned table: numbers to the right, text to the left, a rule under the header."""
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if name in _NUMBER_COLUMNS else cell.ljust(w)
            for cell, w, name in zip(cells, widths, columns, strict=True)
        ).rstrip()

    return [line(columns), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _footer(count: int, complete: bool, state: State, as_csv: bool, now_ns: int) -> None:
    if state.watermark_ts == 0:
        where = "the projection is empty (nothing projected yet)"
    else:
        lag_s = lag_of(state, now_ns) or 0.0
        where = (
            f"the projection includes every transfer up to {rfc3339_of_ns(state.watermark_ts)} "
            f"(engine time; at most {lag_s:.1f} s behind the engine)"
        )
    more = "" if complete else " (more rows follow: raise --rows-max or narrow the query)"
    click.echo(f"{count} rows{more}; {where}", err=as_csv)
