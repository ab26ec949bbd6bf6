"""The finance exports: a report of one period read in one snapshot, written as CSV or JSON
with its control totals and the SHA-256 of its CSV bytes (finance/README.md, "Exports").

Invariants:
- A report reads only its period (ledger/repositories/finance_reports.py), in one REPEATABLE
  READ, READ ONLY transaction: every query of one export sees the same data.
- Nothing time-of-generation is in the bytes. A closed (or locked) period's journals, memo and
  stored balances never change, so its export is the same bytes every time; an open period's
  export says `provisional` (its journals are still being posted).
- CSV: RFC 4180 (comma, CRLF, quotes only where needed), UTF-8, a header row, rows in the
  report's deterministic order. The control: `rows`, `totals` (per currency, or per credit type
  for credits), `sha256` (hex) of the CSV bytes, `provisional`. The CLI writes it beside the
  file (`<file>.control.json`); the API sends it in headers (CSV) or in the body (JSON).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import IO, Final

import msgspec

from finance import balances
from finance import recognition as rec
from finance import reports as rp
from finance.reports import ErpMapping, Layout, Report, Table, Totals
from grants.errors import InvalidRequest
from ledger.db import Connection, Pool
from ledger.repositories import finance as finance_repo
from ledger.repositories import finance_reports as repo

FUNCTIONAL_CURRENCY_DEFAULT: Final = "USD"
# The environment variable naming the JSON file that maps the default chart to the ERP's.
ERP_ACCOUNTS_ENV: Final = "CREDIT_LEDGER_ERP_ACCOUNTS"
CONTROL_SUFFIX: Final = ".control.json"


class ExportRequest(msgspec.Struct, frozen=True):
    report: Report
    period: dt.date
    layout: Layout = Layout.GENERIC
    customer_id: int | None = None
    functional_currency: str = FUNCTIONAL_CURRENCY_DEFAULT
    mapping: ErpMapping = msgspec.field(default_factory=ErpMapping)


class Control(msgspec.Struct, frozen=True):
    """What an export's reader checks it against."""

    report: str
    period: str
    layout: str
    customer_id: str | None
    provisional: bool
    rows: int
    totals: dict[str, dict[str, str]]
    sha256: str  # hex digest of the CSV bytes


class Prepared:
    """A report being read: its columns, its rows (an async iterator: the journal lines are
    streamed), and its totals once the rows are read."""

    def __init__(
        self,
        columns: tuple[str, ...],
        rows: AsyncIterator[tuple[str, ...]],
        totals: Callable[[], dict[str, dict[str, str]]],
        provisional: bool,
    ) -> None:
        self.columns = columns
        self.rows = rows
        self.totals = totals
        self.provisional = provisional


def load_mapping(path: str | Path | None) -> ErpMapping:
    """The ERP mapping in a JSON file: `{"accounts": {"2100": "2400 Deferred Revenue", ...},
    "subsidiary": "Parent Company"}`; no file, the identity. A bad file is a 422 naming it."""
    if not path:
        return ErpMapping()
    try:
        mapping = msgspec.json.decode(Path(path).read_bytes(), type=ErpMapping)
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as error:
        raise InvalidRequest(
            f"ERP account mapping {str(path)!r}: {error}", field="mapping"
        ) from None
    unknown = sorted(set(mapping.accounts) - set(rec.ACCOUNTS))
    if unknown:
        raise InvalidRequest(
            f"ERP account mapping {str(path)!r} names accounts of no chart: {unknown}",
            field="mapping",
        )
    return mapping


def mapping_from_env(env: Mapping[str, str]) -> ErpMapping:
    return load_mapping(env.get(ERP_ACCOUNTS_ENV))


async def provisional(conn: Connection, period: dt.date) -> bool:
    """Whether the period is open (its export may still change)."""
    return period not in {p.period_start for p in await finance_repo.periods(conn)}


async def _listed(rows: list[tuple[str, ...]]) -> AsyncIterator[tuple[str, ...]]:
    for row in rows:
        yield row


def _fixed(table: Table, is_provisional: bool) -> Prepared:
    return Prepared(table.columns, _listed(table.rows), lambda: table.totals, is_provisional)


async def prepare(conn: Connection, request: ExportRequest) -> Prepared:
    """Reads the report (the caller holds a transaction on `conn`, see `snapshot`)."""
    period, customer = request.period, request.customer_id
    is_provisional = await provisional(conn, period)
    report = request.report
    if report is Report.JOURNAL_LINES:
        totals = Totals()
        lines = repo.stream_lines(conn, period, customer)

        async def shaped() -> AsyncIterator[tuple[str, ...]]:
            async for line in lines:
                yield rp.journal_line_row(line, request.functional_currency, totals)

        return Prepared(rp.JOURNAL_LINE_COLUMNS, shaped(), totals.rendered, is_provisional)
    if report is Report.SUMMARY_JOURNAL:
        table = rp.summary_table(
            await repo.summary(conn, period, customer),
            period,
            request.layout,
            request.mapping,
            request.functional_currency,
        )
    elif report is Report.ROLLFORWARD:
        rolled = await balances.rollforward(conn, period, customer_id=customer)
        table = rp.rollforward_table(rolled, period)
    elif report is Report.REVENUE:
        table = rp.revenue_table(
            await repo.revenue(conn, period, customer, list(rp.REVENUE_TYPES)), period
        )
    elif report is Report.AGING:
        blocks = await balances.period_blocks(conn, period, customer_id=customer)
        table = rp.aging_table(blocks, period)
    elif report is Report.BLOCKS:
        blocks = await balances.period_blocks(conn, period, customer_id=customer)
        terms = await repo.block_terms(conn, [b.block_id for b in blocks])
        table = rp.blocks_table(blocks, terms, period)
    elif report is Report.PROMOTIONAL_MEMO:
        table = rp.memo_table(await repo.memo(conn, period, customer), period)
    else:
        table = await _reconciliation(conn, period, customer, is_provisional)
    return _fixed(table, is_provisional)


async def _reconciliation(
    conn: Connection, period: dt.date, customer: int | None, is_provisional: bool
) -> Table:
    moved = await repo.moved_blocks(conn, period, customer)
    if is_provisional:
        latest = await repo.latest_projection_check(conn)
        if latest is None:
            described = {"projection_check": "none"}
            clean = False
        else:
            described = {
                "projection_check": str(latest.id),
                "from_ts": str(latest.from_ts),
                "through_ts": str(latest.through_ts),
                "ran_at": rp.iso(latest.ran_at),
                "clean": str(latest.clean).lower(),
            }
            clean = latest.clean
        state = await finance_repo.read_state(conn)
        base = max(
            (p.period_start for p in await finance_repo.periods(conn) if p.period_start < period),
            default=None,
        )
        checks = await repo.block_checks(conn, moved, state.watermark_ts, base)
        return rp.reconciliation_table(
            period, projection=described, projection_clean=clean, checks=checks
        )
    # A closed period: what its close stored, never what has happened since.
    (closed,) = [p for p in await finance_repo.periods(conn) if p.period_start == period]
    described = {"closed_watermark_ts": str(closed.watermark_ts)}
    described.update({k: json.dumps(v, sort_keys=True) for k, v in sorted(closed.checks.items())})
    stored = {
        b.block_id: b for b in await balances.period_blocks(conn, period, customer_id=customer)
    }
    terms = await repo.block_terms(conn, moved)
    journaled = await repo.journal_liabilities(conn, moved, period)
    at_close = []
    for block_id in moved:
        t = terms.get(block_id)
        if t is None or t.category != "paid" or not t.currency:
            continue
        kept = stored.get(block_id)
        at_close.append(
            rp.LiabilityAtClose(
                block_id,
                None if kept is None else kept.customer_id,
                t.currency,
                0 if kept is None else kept.remaining_minor,
                # What it owed at the period's start, and the period's own lines.
                (0 if kept is None else kept.opening_minor) + journaled.get(block_id, 0),
            )
        )
    return rp.reconciliation_table(
        period, projection=described, projection_clean=True, at_close=at_close
    )


# -- writing ---------------------------------------------------------------------------------------


class CsvSink:
    """CSV written to a binary stream, hashed as it goes."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.rows = 0
        self._text = io.StringIO()
        self._writer = csv.writer(self._text, lineterminator="\r\n")

    def write(self, row: tuple[str, ...]) -> None:
        self._writer.writerow(row)
        data = self._text.getvalue().encode()
        self._text.seek(0)
        self._text.truncate()
        self.digest.update(data)
        self.out.write(data)


def _control(request: ExportRequest, prepared: Prepared, rows: int, sha256: str) -> Control:
    return Control(
        report=request.report.value,
        period=rp.month(request.period),
        layout=request.layout.value,
        customer_id=None if request.customer_id is None else rp._id(request.customer_id),
        provisional=prepared.provisional,
        rows=rows,
        totals=prepared.totals(),
        sha256=sha256,
    )


async def write_csv(
    pool: Pool,
    request: ExportRequest,
    out: IO[bytes],
    progress: Callable[[int], None] | None = None,
) -> Control:
    """Writes the report as CSV to `out`, calling `progress(rows)` after each row; returns the
    control of the bytes written."""
    async with snapshot(pool) as conn:
        prepared = await prepare(conn, request)
        sink = CsvSink(out)
        sink.write(prepared.columns)
        rows = 0
        async for row in prepared.rows:
            sink.write(row)
            rows += 1
            if progress is not None:
                progress(rows)
        return _control(request, prepared, rows, sink.digest.hexdigest())


async def export_csv(pool: Pool, request: ExportRequest) -> tuple[bytes, Control]:
    out = io.BytesIO()
    control = await write_csv(pool, request, out)
    return out.getvalue(), control


async def export_json(pool: Pool, request: ExportRequest) -> bytes:
    """`{"report", "period", "layout", "customer_id", "provisional", "columns", "rows",
    "control"}`: rows as arrays of text in the columns' order; the control's sha256 is of the
    CSV form of the same report (the bytes `format=csv` answers)."""
    async with snapshot(pool) as conn:
        prepared = await prepare(conn, request)
        sink = CsvSink(io.BytesIO())
        sink.write(prepared.columns)
        rows: list[tuple[str, ...]] = []
        async for row in prepared.rows:
            sink.write(row)
            rows.append(row)
        control = _control(request, prepared, len(rows), sink.digest.hexdigest())
    document = {
        "report": control.report,
        "period": control.period,
        "layout": control.layout,
        "customer_id": control.customer_id,
        "provisional": control.provisional,
        "columns": list(prepared.columns),
        "rows": rows,
        "control": {"rows": control.rows, "totals": control.totals, "sha256": control.sha256},
    }
    return msgspec.json.encode(document)


def control_json(control: Control) -> bytes:
    """The control as the CLI writes it beside a CSV (sorted keys, a final newline)."""
    return json.dumps(msgspec.to_builtins(control), sort_keys=True, indent=2).encode() + b"\n"


def content_digest(data: bytes) -> str:
    """RFC 9530's Content-Digest of `data`: `sha-256=:<base64>:`."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


@contextlib.asynccontextmanager
async def snapshot(pool: Pool) -> AsyncIterator[Connection]:
    """A connection in a REPEATABLE READ, READ ONLY transaction: one export, one snapshot."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield conn
